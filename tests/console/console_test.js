// Drives the web console in Debian's headless Chromium through playwright-core (no browser download:
// executablePath /usr/bin/chromium). Run by tests/tests/console_browser.rs against a fresh broker:
//   node console_test.js BASE_URL SCREENSHOT_DIR
// Prints "console ok" at the end; any failed step throws (exit 1) with the step's name. Every wait is on a
// condition (selector, text, response) with a generous timeout: no fixed sleeps.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error('usage: node console_test.js BASE_URL SCREENSHOT_DIR');
  process.exit(2);
}
const TIMEOUT = 90_000;
const AUTH = 'Basic ' + Buffer.from('guest:guest').toString('base64');
const notExercised = [];

let step = 'start';
function log(s) { step = s; console.log('step: ' + s); }

// The API directly (to check what the broker offers and what the console did), not through the page.
async function api(method, p, body) {
  const res = await fetch(base + p, {
    method,
    headers: { Authorization: AUTH, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  return { status: res.status, data };
}

// Waits until `check` returns a truthy value (polling, with a deadline; the interval is not a timing
// assertion, only how often to look).
async function until(what, check, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await check(); } catch (e) { last = e; }
    if (last && !(last instanceof Error)) return last;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what + (last instanceof Error ? ': ' + last.message : ''));
    await new Promise(r => setTimeout(r, 200));
  }
}

async function queueMessages(name) {
  const r = await api('GET', '/api/queues/%2F/' + encodeURIComponent(name));
  return r.status === 200 ? r.data.messages : undefined;
}

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mailroom-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    timeout: TIMEOUT,
  });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.setDefaultNavigationTimeout(TIMEOUT);
  const errors = [];
  page.on('pageerror', e => errors.push(e.message));
  const shot = async name => page.screenshot({ path: path.join(shots, name + '.png'), fullPage: true });
  const go = async hash => {
    await page.evaluate(h => { location.hash = h; }, hash);
    await page.waitForFunction(h => document.getElementById('main').dataset.page === h.split('/')[1] && !document.querySelector('#main .error'), hash);
  };
  const flash = async re => page.waitForFunction(src => new RegExp(src).test(document.getElementById('flash').textContent), re.source);

  try {
    log('login');
    await page.goto(base + '/');
    await page.fill('#login-user', 'guest');
    await page.fill('#login-password', 'wrong');
    await page.click('#login-submit');
    await page.waitForSelector('#login-error:has-text("Login failed")');
    await page.fill('#login-password', 'guest');
    await page.click('#login-submit');
    await page.waitForSelector('[data-testid="count-queues"]');
    await page.waitForSelector('#whoami:has-text("guest")');

    log('declare queues (a work queue dead-lettering into work.dlq)');
    await go('#/queues');
    await page.fill('#q-name', 'work.dlq');
    await page.click('#q-submit');
    await flash(/Queue work\.dlq declared/);
    await page.fill('#q-name', 'work');
    await page.fill('#q-args', '{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "work.dlq"}');
    await page.click('#q-submit');
    await flash(/Queue work declared/);
    await page.waitForSelector('tr[data-queue="work"]');

    log('declare an exchange and bind it in the binding editor');
    await go('#/exchanges');
    await page.fill('#x-name', 'jobs');
    await page.selectOption('#x-type', 'direct');
    await page.click('#exchange-add button[type=submit]');
    await page.waitForSelector('a[href="#/exchange/%2F/jobs"]');
    await page.click('a[href="#/exchange/%2F/jobs"]');
    await page.waitForSelector('[data-testid="exchange-name"]:has-text("jobs")');
    await page.fill('#b-dest', 'work');
    await page.fill('#b-key', 'job.new');
    await page.click('#b-submit');
    await page.waitForSelector('[data-testid="bindings"] td:has-text("job.new")');
    const b = await api('GET', '/api/bindings/%2F/e/jobs/q/work');
    if (b.status !== 200 || !b.data.some(x => x.routing_key === 'job.new')) throw new Error('the binding is not in the broker: ' + JSON.stringify(b));

    log('test route');
    await page.fill('#r-key', 'job.new');
    await page.click('#r-submit');
    await page.waitForSelector('[data-testid="route-queue"]:has-text("work")');
    await page.fill('#r-key', 'job.other');
    await page.click('#r-submit');
    await page.waitForSelector('[data-testid="route-none"]');
    await page.fill('#r-key', 'job.new');
    await page.click('#r-submit');
    await page.waitForSelector('[data-testid="route-queue"]:has-text("work")');
    await shot('exchange');

    log('publish from the exchange page');
    await page.fill('#p-key', 'job.new');
    await page.fill('#p-payload', 'hello console');
    await page.fill('#p-message_id', 'm-console-1');
    await page.fill('#p-correlation_id', 'c-console-1');
    await page.click('#p-submit');
    await flash(/published and routed/);

    log('see the message counted');
    await go('#/queues');
    await page.waitForSelector('tr[data-queue="work"] [data-testid="queue-messages"]:has-text("1")');
    await shot('queues');
    await page.click('a[href="#/queue/%2F/work"]');
    await page.waitForSelector('[data-testid="queue-name"]:has-text("work")');
    await page.waitForSelector('[data-testid="q-total"]:has-text("1")');

    log('browse the queue and see the message still there');
    const browse = await api('GET', '/api/queues/%2F/work/browse?from=0&count=10');
    if (browse.status === 404 || browse.status === 405) {
      // Browsing (the ops work) has not landed: the page must say so rather than break.
      await page.click('[data-testid="browse-load"]');
      await page.waitForSelector('[data-testid="browse-na"]');
      notExercised.push('browse the queue (GET /api/queues/{vhost}/{name}/browse answers ' + browse.status + ')');
    } else {
      await page.click('[data-testid="browse-load"]');
      await page.waitForSelector('[data-testid="browse-messages"] [data-testid="payload"]:has-text("hello console")');
      await page.waitForSelector('[data-testid="browse-messages"] td:has-text("m-console-1")');
      if (await queueMessages('work') !== 1) throw new Error('browsing consumed the message');
      await page.click('[data-testid="browse-refresh"]');
      await page.waitForSelector('[data-testid="browse-messages"] [data-testid="payload"]:has-text("hello console")');
      await page.waitForSelector('[data-testid="q-total"]:has-text("1")');
    }
    await shot('queue');

    log('dead-letter the message (get with reject, no requeue)');
    await page.selectOption('#g-ackmode', 'reject_requeue_false');
    await page.click('#g-submit');
    await flash(/1 message\(s\) taken/);
    await page.waitForSelector('[data-testid="q-total"]:has-text("0")');
    await until('the message in work.dlq', async () => (await queueMessages('work.dlq')) === 1);

    log('find it in the dead-letter view');
    await go('#/dlq');
    await page.waitForSelector('a[href="#/dlq/%2F/work.dlq"]');
    await shot('dead-letter-queues');
    await page.click('a[href="#/dlq/%2F/work.dlq"]');
    await page.waitForSelector('[data-testid="dlq-name"]:has-text("work.dlq")');
    await page.waitForSelector('[data-testid="q-total"]:has-text("1")');
    if (browse.status === 404 || browse.status === 405) {
      await page.click('[data-testid="dlq-browse-load"]');
      await page.waitForSelector('[data-testid="dlq-browse-na"]');
      notExercised.push('see the dead letter\'s x-death in the DLQ view (needs browse)');
    } else {
      await page.click('[data-testid="dlq-browse-load"]');
      await page.waitForSelector('[data-testid="dlq-browse-messages"] [data-testid="x-death"]:has-text("rejected from work")');
    }
    await shot('dead-letters');

    log('redrive it and watch the progress finish');
    await page.click('#rd-submit');
    await page.waitForSelector('#redrive-status[data-state="done"]');
    const progress = await page.$eval('#redrive-progress', p => ({ value: p.value, max: p.max, hidden: p.hidden }));
    if (progress.hidden || progress.value !== progress.max || progress.value < 1) throw new Error('the progress bar did not finish: ' + JSON.stringify(progress));
    await page.waitForSelector('#redrive-status:has-text("1")');
    await page.waitForSelector('[data-testid="q-total"]:has-text("0")');
    await until('the message back in work', async () => (await queueMessages('work')) === 1);
    // The page followed a message-move task (POST .../redrive answers with one; GET /api/tasks/{id}).
    const tasks = await api('GET', '/api/tasks');
    if (tasks.status !== 200 || !tasks.data.some(t => t.source === 'work.dlq' && t.state === 'done' && t.moved === 1)) {
      throw new Error('no finished move task for work.dlq: ' + JSON.stringify(tasks));
    }
    await shot('redrive');

    log('overview with charts');
    await go('#/overview');
    await page.waitForSelector('[data-testid="chart-rates"] canvas');
    await page.waitForSelector('[data-testid="chart-lengths"] canvas');
    await page.waitForSelector('[data-testid="count-queues"]:has-text("2")');
    await shot('overview');

    log('connections (a connection of our own, closed from the page)');
    await go('#/connections');
    await page.waitForSelector('[data-testid="connections"] [data-testid="close-connection"]');
    await shot('connections');
    await page.click('[data-testid="connections"] [data-testid="close-connection"]');
    await flash(/Connection closed/);
    await until('no connection left', async () => (await api('GET', '/api/connections')).data.length === 0);

    log('users and permissions');
    await go('#/users');
    await page.fill('#u-name', 'console-user');
    await page.fill('#u-password', 'pw');
    await page.fill('#u-tags', 'management');
    await page.click('#user-add button[type=submit]');
    await page.waitForSelector('[data-testid="users"] td:has-text("console-user")');
    await shot('users');

    log('policies');
    await go('#/policies');
    await page.fill('#po-name', 'cap');
    await page.fill('#po-pattern', '^work$');
    await page.fill('#po-definition', '{"max-length": 1000}');
    await page.click('#policy-set button[type=submit]');
    await page.waitForSelector('[data-testid="policies"] td:has-text("cap")');
    await shot('policies');

    log('trace');
    await go('#/trace');
    await page.fill('#t-id', 'c-console-1');
    await page.click('#t-submit');
    const trace = await api('GET', '/api/trace?correlation_id=c-console-1');
    if (trace.status === 404) {
      await page.waitForSelector('[data-testid="trace-na"]');
      notExercised.push('trace timeline (GET /api/trace answers 404)');
    } else {
      await page.waitForSelector('[data-testid="trace-events"], [data-testid="trace-none"]');
    }
    await shot('trace');

    if (errors.length) throw new Error('JavaScript errors in the page: ' + errors.join('; '));
  } catch (e) {
    try { await shot('failed-' + step.replace(/[^a-z0-9]+/gi, '-')); } catch (_) { /* best effort */ }
    console.error('FAILED at step "' + step + '": ' + (e && e.stack || e));
    // What the page showed, to tell a slow broker from a page that did not act.
    try {
      const seen = await page.evaluate(() => ({
        hash: location.hash,
        page: document.getElementById('main').dataset.page,
        flash: document.getElementById('flash').textContent,
        main: document.getElementById('main').innerText.slice(0, 600),
      }));
      console.error('the page: ' + JSON.stringify(seen));
      console.error('page errors: ' + JSON.stringify(errors));
    } catch (_) { /* best effort */ }
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
    process.exit(1);
  }
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
  for (const n of notExercised) console.log('not exercised: ' + n);
  console.log('console ok');
}

main().catch(e => { console.error('FAILED: ' + (e && e.stack || e)); process.exit(1); });
