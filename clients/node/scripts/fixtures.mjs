// Compiles the decorator test fixtures twice, with standard ECMAScript decorators and with
// TypeScript's experimentalDecorators, against the built package.
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tsc = join(root, 'node_modules/typescript/bin/tsc');
for (const [name, experimental] of [['standard', false], ['experimental', true]]) {
  execFileSync(process.execPath, [
    tsc,
    'test/fixtures/decorated.ts',
    '--outDir', `test/build/${name}`,
    // Set so that the fixture's import of the package by its own name resolves (TS2209).
    '--rootDir', 'test/fixtures',
    '--target', 'ES2022',
    '--module', 'NodeNext',
    '--moduleResolution', 'NodeNext',
    '--strict',
    '--skipLibCheck',
    ...(experimental ? ['--experimentalDecorators'] : []),
  ], { cwd: root, stdio: 'inherit' });
}
console.log('compiled test/fixtures/decorated.ts both ways');
