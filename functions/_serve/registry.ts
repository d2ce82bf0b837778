// The functions this project serves, with their verify_jwt setting (mirrors
// supabase/config.toml, which a test keeps in agreement).
import { handler as health } from "../health/handler.ts";

export interface FunctionEntry {
  handler: (req: Request) => Promise<Response>;
  verifyJwt: boolean;
}

export const functions: Record<string, FunctionEntry> = {
  health: { handler: health, verifyJwt: false },
};
