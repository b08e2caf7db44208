// GraphiQL in headless Chromium, as a developer meets it: open <server>/graphql with every
// request to anywhere else blocked (the page must need nothing but the server), open the Docs
// explorer and read Query's fields, get `creditTypes` offered by autocompletion, run a query
// and read the answer from the result pane, keep a screenshot; then, signed in through the
// Headers tab, run a subscription to a tenant's live balance over /graphql/ws and watch the
// result pane change when a project is created. Prints JSON:
// { result, docsFields, completions, subscription: { first, changed, attempts }, blocked,
//   cspViolations, pageErrors }.
//
// usage: node graphiql.mjs <server url> <screenshot.png> <token> <tenant id>
import { chromium } from 'playwright-core';

const [server, screenshot, token, tenant] = process.argv.slice(2);
const query = '{ creditTypes { value amount } }';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
const blocked = [];
const cspViolations = [];
const pageErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
  });
  await page.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(server)) return route.continue();
    blocked.push(url);
    return route.abort();
  });

  await page.goto(`${server}/graphql`);
  const editor = '.graphiql-query-editor .CodeMirror';
  await page.waitForSelector(editor, { timeout: 30000 });

  // The Docs explorer: the schema has loaded (introspection), Query's fields are listed.
  await page.click('button[aria-label="Show Documentation Explorer"]');
  await page.click('.graphiql-doc-explorer a.graphiql-doc-explorer-type-name:text-is("Query")', {
    timeout: 30000,
  });
  await page.waitForSelector('.graphiql-doc-explorer-field-name', { timeout: 30000 });
  const docsFields = await page.$$eval('.graphiql-doc-explorer-field-name', (els) =>
    els.map((e) => e.textContent),
  );

  // Autocompletion: type the start of a field, as a developer would.
  await page.evaluate((sel) => document.querySelector(sel).CodeMirror.setValue(''), editor);
  await page.click(`${editor} .CodeMirror-lines`);
  await page.keyboard.type('{ cre', { delay: 50 });
  await page.waitForSelector('.CodeMirror-hints .CodeMirror-hint', { timeout: 30000 });
  const completions = await page.$$eval('.CodeMirror-hints .CodeMirror-hint', (els) =>
    els.map((e) => e.textContent),
  );
  await page.keyboard.press('Escape');

  // Run a query and read what GraphiQL shows.
  await page.evaluate(([sel, q]) => document.querySelector(sel).CodeMirror.setValue(q), [editor, query]);
  await page.click('.graphiql-execute-button');
  const result = '.graphiql-response .CodeMirror';
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.CodeMirror.getValue().includes('creditTypes'),
    result,
    { timeout: 30000 },
  );
  const shown = await page.evaluate((sel) => document.querySelector(sel).CodeMirror.getValue(), result);

  // A subscription, signed in as GraphiQL's Headers tab keeps it.
  await page.evaluate((t) => {
    window.localStorage.setItem('graphiql:headers', JSON.stringify({ Authorization: `Bearer ${t}` }));
  }, token);
  await page.reload();
  await page.waitForSelector(editor, { timeout: 30000 });
  const subscription = `subscription { creditBalance(tenantId: "${tenant}") { used remaining } }`;
  const shows = (needle, timeout = 30000) =>
    page.waitForFunction(
      ([sel, text]) => (document.querySelector(sel)?.CodeMirror.getValue() ?? '').includes(text),
      [result, needle],
      { timeout },
    );
  const text = () =>
    page.evaluate((sel) => document.querySelector(sel)?.CodeMirror.getValue() ?? '', result);
  const pane = async () => JSON.parse(await text());
  await page.evaluate(([sel, q]) => document.querySelector(sel).CodeMirror.setValue(q), [editor, subscription]);
  // GraphiQL takes up an edit a moment later: a click before that runs the query the page was
  // reloaded with (creditTypes), and is made again.
  let attempts = 0;
  for (let attempt = 1; ; attempt++) {
    attempts = attempt;
    await page.waitForTimeout(500);
    await page.click('.graphiql-execute-button');
    try {
      await shows('"used": 0', 10000);
      break;
    } catch (e) {
      if (attempt >= 4 || !(await text()).includes('creditTypes')) throw e;
    }
  }
  const first = await pane();
  // A change made elsewhere (a backend creating a project: 2 credits) reaches the pane.
  const made = await fetch(`${server}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({
      query: `mutation { createProject(tenantId: "${tenant}", input: { name: "live" }) { id } }`,
    }),
  }).then((r) => r.json());
  if (made.errors) throw new Error(JSON.stringify(made.errors));
  await shows('"used": 2');
  const changed = await pane();
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    result: JSON.parse(shown),
    docsFields,
    completions,
    subscription: { first, changed, attempts },
    blocked,
    cspViolations,
    pageErrors,
  }));
} finally {
  await browser.close();
}
