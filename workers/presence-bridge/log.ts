// The bridge's logs: JSON lines on stdout/stderr, what container platforms collect.

export type Logger = (
  level: "debug" | "info" | "warn" | "error",
  msg: string,
  data?: object,
) => void;

export const jsonLogger: Logger = (level, msg, data = {}) => {
  const line = JSON.stringify({
    level,
    msg,
    service: "presence-bridge",
    time: new Date().toISOString(),
    ...data,
  });
  if (level === "error" || level === "warn") console.error(line);
  else if (level !== "debug") console.log(line);
};
