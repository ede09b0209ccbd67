// Bundles src/audit-log-viewer.js and its imports into dist/audit-log-viewer.js (one ES
// module, no imports left), which build.rs embeds and the server serves at /console.
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const outfile = new URL('dist/audit-log-viewer.js', import.meta.url).pathname;
const LIMIT = 300 * 1024; // gzipped bytes

await build({
  entryPoints: [new URL('src/audit-log-viewer.js', import.meta.url).pathname],
  outfile,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2020',
  minify: true,
  legalComments: 'eof',
  logLevel: 'warning',
});

const bytes = readFileSync(outfile);
const gzipped = gzipSync(bytes, { level: 9 }).length;
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
console.log(`dist/audit-log-viewer.js: ${kb(bytes.length)} (${bytes.length} bytes), ${kb(gzipped)} gzipped (${gzipped} bytes)`);
if (gzipped > LIMIT) {
  console.error(`the bundle is over ${kb(LIMIT)} gzipped`);
  process.exit(1);
}
