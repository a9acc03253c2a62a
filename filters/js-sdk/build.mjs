#!/usr/bin/env node
// weir-filter-build [DIR]: DIR's filter (package.json's "main", else
// filter.js) bundled with what it imports, then made a weir:filter
// component of the world package.json names ("weir": {"world": "http"}),
// written to DIR/target/weir/NAME.wasm.
//
// The component is "pure": no WASI at all (weir gives filters none), so
// the engine's console, clocks and randomness are left out; `host` from
// weir-filter is the filter's outside world.

import { readFile, writeFile, mkdir, realpath } from 'node:fs/promises';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rolldown } from 'rolldown';
import { componentize } from '@bytecodealliance/componentize-js';

const WORLDS = ['http', 'dns', 'kafka', 'memcached', 'cassandra', 'stream'];

async function main() {
  const dir = resolve(process.argv[2] ?? '.');
  const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8'));
  const world = pkg.weir?.world;
  if (!WORLDS.includes(world)) {
    throw new Error(`${dir}/package.json: "weir": {"world": ...} must be one of ${WORLDS.join(', ')} (got ${JSON.stringify(world)})`);
  }
  const name = pkg.name;
  const out = join(dir, 'target', 'weir');
  await mkdir(out, { recursive: true });

  // one module: the engine resolves no packages of its own
  const bundle = await rolldown({
    input: join(dir, pkg.main ?? 'filter.js'),
    external: [/^weir:filter\//],
    platform: 'neutral',
    logLevel: 'warn',
  });
  const { output } = await bundle.generate({ format: 'esm' });
  await bundle.close();
  const bundled = join(out, `${name}.bundle.js`);
  await writeFile(bundled, output[0].code);

  // the SDK's wit/ may be a link (to the repository's wit/ in a checkout);
  // the splicer's file system does not follow links
  const sdk = dirname(await realpath(fileURLToPath(import.meta.url)));
  const wit = await realpath(join(sdk, 'wit'));
  const { component } = await componentize({
    sourcePath: bundled,
    witPath: wit,
    worldName: `${world}-filter`,
    disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
  });
  const wasm = join(out, `${name}.wasm`);
  await writeFile(wasm, component);
  console.log(`${wasm}: ${world}-filter, ${component.length} bytes`);
}

main().catch((e) => {
  console.error(`weir-filter-build: ${e.message ?? e}`);
  process.exit(1);
});
