// client/database.types.ts is generated from the schema (make types); this fails when a
// migration changed the schema and nobody regenerated it.
import assert from "node:assert/strict";
import { ROOT } from "../_lib/env.ts";

Deno.test("the_committed_database_types_match_the_schema", async () => {
  const out = await new Deno.Command("bash", {
    args: [`${ROOT}/scripts/types.sh`, "--print"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  assert.equal(out.code, 0, decoder.decode(out.stderr));
  const committed = await Deno.readTextFile(`${ROOT}/client/database.types.ts`);
  assert.ok(
    decoder.decode(out.stdout) === committed,
    "client/database.types.ts is out of date with the schema: run `make types` and commit it",
  );
});
