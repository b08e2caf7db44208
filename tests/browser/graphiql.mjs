// GraphiQL in headless Chromium: open <server>/graphql, run a query, read the answer from the
// result pane, keep a screenshot. The page loads GraphiQL and React from unpkg.com; with no
// internet here, those requests are answered from this directory's node_modules (the same
// releases, pinned in package.json).
//
// usage: node graphiql.mjs <server url> <screenshot.png>
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [server, screenshot] = process.argv.slice(2);
const modules = join(dirname(fileURLToPath(import.meta.url)), 'node_modules');
const query = '{ creditTypes { value amount } }';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.route('https://unpkg.com/**', async (route) => {
    // /react@18/umd/react.development.js → node_modules/react/umd/react.development.js
    const [, name, path] = new URL(route.request().url()).pathname.match(/^\/([^@/]+)@[^/]+\/(.*)$/);
    const type = path.endsWith('.css') ? 'text/css' : 'application/javascript';
    await route.fulfill({ body: await readFile(join(modules, name, path)), contentType: type });
  });
  await page.route('https://graphql.org/**', (route) => route.fulfill({ status: 404, body: '' }));

  await page.goto(`${server}/graphql`);
  const editor = '.graphiql-query-editor .CodeMirror';
  await page.waitForSelector(editor, { timeout: 30000 });
  await page.evaluate(([sel, q]) => document.querySelector(sel).CodeMirror.setValue(q), [editor, query]);
  await page.click('.graphiql-execute-button');
  const result = '.graphiql-response .CodeMirror';
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.CodeMirror.getValue().includes('creditTypes'),
    result,
    { timeout: 30000 },
  );
  const shown = await page.evaluate((sel) => document.querySelector(sel).CodeMirror.getValue(), result);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(shown);
} finally {
  await browser.close();
}
