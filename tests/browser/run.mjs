// MQTT.js in headless Chromium, driven by tests/browser.rs.
//
//   node run.mjs <ws-url>
//
// Opens a blank page in Debian's Chromium (CHROMIUM, default
// /usr/bin/chromium), loads MQTT.js's browser bundle into it, and in the
// page: connects to <ws-url> with MQTT 5 over WebSocket, subscribes to
// `browser/in` at QoS 1, and prints `READY` (through the page's console).
// The first message on `browser/in` is answered with `echo: <payload>` on
// `browser/out` at QoS 1 (awaiting its PUBACK); then the page disconnects
// and this script prints `RESULT <json>` and exits 0. Any failure, or
// nothing within 60 s, prints `ERROR ...` and exits 1.
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const url = process.argv[2];
if (!url) {
  console.log('ERROR usage: node run.mjs <ws-url>');
  process.exit(2);
}

const timer = setTimeout(() => {
  console.log('ERROR nothing happened within 60 s');
  process.exit(1);
}, 60_000);

let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // Running as root in CI: Chromium's sandbox needs a user namespace.
    args: ['--no-sandbox'],
  });
  const page = await browser.newPage();
  page.on('console', (m) => console.log(m.text()));
  page.on('pageerror', (e) => console.log(`ERROR page: ${e.message}`));
  await page.addScriptTag({ path: require.resolve('mqtt/dist/mqtt.min') });
  const result = await page.evaluate(async (url) => {
    const client = mqtt.connect(url, {
      clientId: 'browser-mqttjs',
      protocolVersion: 5,
      clean: true,
      reconnectPeriod: 0,
    });
    await new Promise((resolve, reject) => {
      client.once('connect', resolve);
      client.once('error', reject);
      client.once('close', () => reject(new Error('closed before CONNACK')));
    });
    const received = new Promise((resolve) => {
      client.on('message', (topic, payload, packet) =>
        resolve({ topic, payload: new TextDecoder().decode(payload), qos: packet.qos }));
    });
    const granted = await client.subscribeAsync('browser/in', { qos: 1 });
    console.log(`READY granted=${JSON.stringify(granted.map((g) => g.qos))}`);
    const msg = await received;
    await client.publishAsync('browser/out', `echo: ${msg.payload}`, { qos: 1 });
    await client.endAsync();
    return { ...msg, protocol: client.stream && client.stream.socket ? client.stream.socket.protocol : null };
  }, url);
  console.log(`RESULT ${JSON.stringify(result)}`);
  clearTimeout(timer);
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(`ERROR ${e && e.stack ? e.stack : e}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
