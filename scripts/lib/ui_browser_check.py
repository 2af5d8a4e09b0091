#!/usr/bin/env python3
"""Headless Chromium against the live page of a running `orderpipeline all` (stdlib only).

    ui_browser_check.py --base http://127.0.0.1:5125 [--screenshots DIR] [--orders N]

Drives Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe: NUL-terminated JSON on fds 3/4, no
WebSocket library needed). It opens /ui, waits until the page has received Server-Sent Events, then POSTs orders
(--orders, 10 a second) while it watches the DOM, and checks that an order it created is shown in the latest-orders
table as Fulfilled with all five hops (created, published, consumed, fulfilled, sent), and that /ui?order=ID shows
the same journey. Prints one JSON line of findings; exit status 0 when every check held, 1 otherwise.
With --screenshots DIR it also writes live-desktop.png (1280 wide) and live-phone.png (390 wide) there.

    ui_browser_check.py --create-topic NAME --brokers HOST:PORT   (with $SERVICES_PYTHON, which has confluent-kafka)

creates a scratch topic of 3 partitions first (a consumer that subscribes to a topic that does not exist yet only
sees it after its next metadata refresh, minutes later).
"""
import argparse, base64, fcntl, json, os, select, shutil, subprocess, sys, tempfile, threading, time, urllib.request, uuid

HOPS = ["created", "published", "consumed", "fulfilled", "sent"]


class Browser:
    def __init__(self, binary):
        self.profile = tempfile.mkdtemp(prefix="orderpipeline-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        # The child reads commands on fd 3 and writes answers on fd 4. Its ends are first moved above 9 so that
        # the dup2 below cannot overwrite one with the other; fds 3 and 4 are kept open (pass_fds) by Popen.
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)

        def fds():
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [binary, "--headless", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
                f"--user-data-dir={self.profile}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.process = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=fds,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_r)
        os.close(child_w)
        self.buffer, self.next_id, self.session = b"", 0, None

    def call(self, method, timeout=15, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_child], [], [], left)[0]:
                raise TimeoutError(f"{method}: no answer from Chromium in {timeout} s")
            chunk = os.read(self.from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk

    def open(self):
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url):
        self.call("Page.navigate", url=url)
        wait_for(lambda: self.evaluate("document.readyState") == "complete", 15, f"{url} did not load")

    def screenshot(self, path, width, mobile):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=mobile)
        time.sleep(0.3)  # let the layout settle at the new width
        # The whole page on a desktop; a phone's first screens (the stages, the charts, find an order).
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        height = min(height, 1700) if mobile else height
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def wait_for(condition, seconds, message, poll=0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(message)


def post_order(base, n):
    body = json.dumps({"customerName": f"Browser Check {n}", "customerEmail": "check@example.com",
                       "items": [{"productName": "Widget", "quantity": 1 + n % 3, "unitPrice": 9.99}]}).encode()
    request = urllib.request.Request(base + "/api/orders", data=body, method="POST", headers={
        "Content-Type": "application/json", "Idempotency-Key": "ui-check-" + uuid.uuid4().hex})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["id"]


ROW = """(() => { const r = document.querySelector('#latest tr[data-order-id="%s"]'); if (!r) return null;
  return {status: r.dataset.status, stage: r.dataset.stage,
          done: [...r.querySelectorAll('td[data-hop]')].filter(td => td.classList.contains('done')).map(td => td.dataset.hop)}; })()"""
JOURNEY = """(() => { const j = document.querySelector('#journey [data-order-id="%s"]'); if (!j) return null;
  return {status: j.dataset.status, stage: j.dataset.stage, done: [...j.querySelectorAll('li.done')].map(li => li.dataset.hop)}; })()"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base")
    parser.add_argument("--create-topic")
    parser.add_argument("--brokers")
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--screenshots")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    if args.create_topic:
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": args.brokers})
        for future in admin.create_topics([NewTopic(args.create_topic, num_partitions=3, replication_factor=1)]).values():
            future.result(timeout=30)
        return 0
    base = args.base.rstrip("/")
    findings = {"ok": False}
    browser = Browser(args.chromium)
    try:
        browser.open()
        browser.navigate(base + "/ui")
        wait_for(lambda: int(browser.evaluate("document.body.dataset.events || 0")) >= 1, 15,
                 "the page received no snapshot event within 15 s")
        # Push orders while the page watches; follow the last one.
        ids, started = [], {}
        def push():
            for n in range(args.orders):
                order = post_order(base, n)
                started[order] = time.monotonic()
                ids.append(order)
                time.sleep(0.1)
        pusher = threading.Thread(target=push)
        pusher.start()
        pusher.join()
        if len(ids) != args.orders:
            raise AssertionError(f"created {len(ids)} of {args.orders} orders")
        # The newest order: the table shows the latest few, and this one was created last.
        watched = ids[-1]
        seen = wait_for(lambda: browser.evaluate(ROW % watched), 15, f"order {watched} never appeared on the page")
        findings["shownAfterMs"] = round((time.monotonic() - started[watched]) * 1000)
        state = wait_for(lambda: (lambda r: r if r and r["status"] == "Fulfilled" and r["done"] == HOPS else None)(
            browser.evaluate(ROW % watched)), 30, f"order {watched} was not shown Fulfilled with all hops: {seen}")
        findings["fulfilledShownAfterMs"] = round((time.monotonic() - started[watched]) * 1000)
        findings["row"] = state
        findings["events"] = int(browser.evaluate("document.body.dataset.events || 0"))
        # Find an order: /ui?order=ID shows its journey.
        browser.navigate(f"{base}/ui?order={watched}")
        journey = wait_for(lambda: browser.evaluate(JOURNEY % watched), 15, "the journey of the order was not shown")
        findings["journey"] = journey
        if journey["status"] != "Fulfilled" or journey["done"] != HOPS:
            raise AssertionError(f"journey shown as {journey}")
        findings["order"] = watched
        findings["ordersCreated"] = len(ids)
        if args.screenshots:
            os.makedirs(args.screenshots, exist_ok=True)
            browser.navigate(f"{base}/ui?order={watched}")
            wait_for(lambda: int(browser.evaluate("document.body.dataset.events || 0")) >= 2, 15, "no events for the screenshot")
            browser.screenshot(os.path.join(args.screenshots, "live-desktop.png"), 1280, False)
            browser.screenshot(os.path.join(args.screenshots, "live-phone.png"), 390, True)
        findings["ok"] = True
    except Exception as error:  # report, do not trace back: the Swift test prints this line
        findings["error"] = f"{type(error).__name__}: {error}"
    finally:
        browser.close()
    print(json.dumps(findings))
    return 0 if findings["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
