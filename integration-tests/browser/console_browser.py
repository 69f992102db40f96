#!/usr/bin/env python3
"""Drives the keymesh admin console in headless Chromium as a person would, and checks it.

Run by the console's Rust integration test as `python3 integration-tests/browser/console_browser.py` with:
  CONSOLE_URL          the console, e.g. http://127.0.0.1:41234
  ISSUER_URL           the test OIDC provider; POST /test/sign-in-as {"sub": ...} picks who signs in next
  OTHER_TENANT_KEY_ID  the id of a key in another tenant (its page must answer 404)
  SCREENSHOT_DIR       where a PNG of every page visited is saved (NN-name.png); a temporary directory if unset
  KEYMESH_AXE_JS       optional: axe-core's axe.min.js; default ~/.cache/keymesh/node/node_modules/axe-core/axe.min.js,
                       where deploy/dev/install-deps.sh test (make test-deps) installs it with npm
Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) and PyPI's selenium and requests.

Every page loaded in the browser is screenshotted, its browser log is read (any SEVERE entry fails: JavaScript errors,
CSP refusals such as inline scripts, failed loads) and axe-core runs on it (any serious or critical violation fails).
Exits 0 when every check passes; otherwise prints the check and the page that failed and exits 1.
"""

import json
import os
import re
import sys
import tempfile
import time
import traceback
from urllib.parse import urljoin, urlsplit

import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

# The policy rules the checks submit. If the console's CEL dialect refuses VALID_RULE, change it here.
INVALID_RULE = "request.operation =="
VALID_RULE = 'request.operation != "decrypt" || "admin" in identity.roles'

KEY = "orders-pii"
APPLICATION = "payments-api"
COOKIE = "keymesh-console"
DEFAULT_AXE_JS = os.path.expanduser("~/.cache/keymesh/node/node_modules/axe-core/axe.min.js")
WAIT_SECONDS = 10
HTTP_TIMEOUT = 10

AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']})
  .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
                                          target: v.nodes.length ? v.nodes[0].target : null}))))
  .catch(e => done({error: String(e)}));
"""
FAILED_LOAD = re.compile(r"^(\S+) - Failed to load resource: the server responded with a status of (\d+)")


class CheckFailed(Exception):
    pass


class Run:
    def __init__(self):
        missing = [v for v in ("CONSOLE_URL", "ISSUER_URL", "OTHER_TENANT_KEY_ID") if not os.environ.get(v)]
        if missing:
            raise SystemExit(f"console_browser.py: set {', '.join(missing)}")
        self.console = os.environ["CONSOLE_URL"].rstrip("/")
        self.issuer = os.environ["ISSUER_URL"].rstrip("/")
        self.other_key = os.environ["OTHER_TENANT_KEY_ID"]
        self.shots = os.environ.get("SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="keymesh-console-shots-")
        os.makedirs(self.shots, exist_ok=True)
        axe_path = os.environ.get("KEYMESH_AXE_JS") or DEFAULT_AXE_JS
        try:
            with open(axe_path, encoding="utf-8") as f:
                self.axe_source = f.read()
        except OSError as e:
            raise SystemExit(f"console_browser.py: cannot read axe-core at {axe_path} ({e}); run make test-deps "
                             "or set KEYMESH_AXE_JS")
        self.check = "start"
        self.pages = 0
        self.axe_runs = 0
        self.driver = None

    # ---- failing -------------------------------------------------------------------------------------------------
    def page(self):
        try:
            return self.driver.current_url
        except Exception:  # noqa: BLE001 - only for the message
            return "(no page)"

    def fail(self, message):
        raise CheckFailed(message)

    def expect(self, condition, message):
        if not condition:
            self.fail(message)

    # ---- the browser ---------------------------------------------------------------------------------------------
    def start_browser(self):
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        self.driver.set_page_load_timeout(15)
        self.driver.set_script_timeout(30)

    def wait(self, condition, what, seconds=WAIT_SECONDS):
        try:
            return WebDriverWait(self.driver, seconds).until(condition)
        except Exception as e:  # noqa: BLE001 - TimeoutException and friends: name what was awaited
            self.fail(f"timed out after {seconds} s waiting for {what} ({type(e).__name__})")

    def loaded(self, name, expect_status=None):
        """Checks the page now in the browser: screenshot, browser log, axe. expect_status: the error status this
        document is meant to answer with (its 'Failed to load resource' log entry is then expected, not a failure)."""
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", "the page to load")
        self.pages += 1
        self.driver.save_screenshot(os.path.join(self.shots, f"{self.pages:02d}-{name}.png"))
        here = urlsplit(self.driver.current_url).path
        severe, saw_status = [], False
        for entry in self.driver.get_log("browser"):
            if entry.get("level") != "SEVERE":
                continue
            m = FAILED_LOAD.match(entry.get("message", ""))
            if expect_status and m and int(m.group(2)) == expect_status and urlsplit(m.group(1)).path == here:
                saw_status = True
                continue
            severe.append(entry)
        if severe:
            lines = "\n".join(f"  [{e.get('source', '?')}] {e.get('message')}" for e in severe)
            if any("/favicon.ico - Failed to load resource" in e.get("message", "") for e in severe):
                lines += "\n  (browsers fetch /favicon.ico by themselves: the console should serve it)"
            self.fail(f"SEVERE browser log entries on page '{name}':\n{lines}")
        if expect_status and not saw_status:
            self.fail(f"page '{name}' did not answer {expect_status} (the browser logged no failed load with it)")
        self.axe(name)

    def axe(self, name):
        self.driver.execute_script(self.axe_source)
        result = self.driver.execute_async_script(AXE_RUN)
        self.axe_runs += 1
        if isinstance(result, dict):
            self.fail(f"axe-core failed to run on page '{name}': {result.get('error')}")
        bad = [v for v in result if v.get("impact") in ("serious", "critical")]
        if bad:
            lines = "\n".join(f"  {v['id']} ({v['impact']}): {v['help']}; {v['nodes']} node(s), first {v['target']}"
                              for v in bad)
            self.fail(f"axe-core: serious/critical accessibility violations on page '{name}':\n{lines}")

    def go(self, path, name, expect_status=None):
        self.driver.get(self.console + path)
        self.loaded(name, expect_status)

    def click_to(self, element, name, expect_status=None):
        """Clicks a link or submit button and checks the page it leads to."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        self.wait(EC.staleness_of(old), f"a new page after clicking {describe(element)}", seconds=15)
        self.loaded(name, expect_status)

    def submit(self, form_css, name, expect_status=None):
        form = self.one(form_css)
        buttons = form.find_elements(By.CSS_SELECTOR, "button[type=submit], button:not([type]), input[type=submit]")
        self.expect(buttons, f"{form_css} has no submit button")
        self.click_to(buttons[0], name, expect_status)

    def one(self, css):
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        self.expect(found, f"no element matches {css}")
        return found[0]

    def absent(self, css, why):
        self.expect(not self.driver.find_elements(By.CSS_SELECTOR, css), f"{css} is present: {why}")

    def text(self, css):
        return (self.one(css).get_attribute("textContent") or "").strip()

    def fill(self, css, value):
        field = self.one(css)
        field.clear()
        field.send_keys(value)

    def select(self, css, value):
        # By each option's value property, so <option>enforce</option> (no value attribute) counts as value enforce.
        menu = Select(self.one(css))
        values = [o.get_attribute("value") for o in menu.options]
        self.expect(value in values, f"{css} has no option {value} (it has {values})")
        menu.select_by_index(values.index(value))

    def path_is(self, path):
        return lambda d: urlsplit(d.current_url).path == path

    def expect_policy_form(self, rules, enforcement, what):
        """The policy form shows `rules` (unless None) and has `enforcement` selected."""
        selected = Select(self.one("form#policy select[name=enforcement]")).first_selected_option.get_attribute("value")
        self.expect(selected == enforcement, f"{what}: enforcement is '{selected}', not '{enforcement}'")
        if rules is not None:
            kept = self.one("form#policy textarea[name=rules]").get_attribute("value").strip()
            self.expect(kept == rules, f"{what}: the rules are '{kept}', not '{rules}'")

    def acknowledge_and_save(self, warning_page, saved_page, on_warning=None):
        """Submits the policy form, which must come back 409 with the enforcement warning; ticks its box and submits
        again, which must land on the key's page."""
        self.submit("form#policy", warning_page, expect_status=409)
        self.one("#enforce-warning")
        if on_warning:
            on_warning()
        box = self.one("input#confirm-enforce[name=confirm_enforce]")
        if not box.is_selected():
            box.click()
        self.submit("form#policy", saved_page)
        self.wait(self.path_is(f"/keys/{KEY}"), f"the key's page after {saved_page}")

    def key_state(self):
        return re.sub(r"[ -]", "_", self.text("#key-state").upper())

    def versions(self):
        return len(self.driver.find_elements(By.CSS_SELECTOR, "table#versions tbody tr"))

    def post_forms(self):
        return self.driver.execute_script(
            "return Array.from(document.forms).filter(f => f.method === 'post').map(f => f.id || f.action)")

    # ---- raw HTTP, outside the browser ----------------------------------------------------------------------------
    def session_cookie(self):
        cookie = self.driver.get_cookie(COOKIE)
        self.expect(cookie and cookie.get("value"), f"the browser holds no {COOKIE} cookie")
        return cookie

    def raw(self, method, url, cookie, data=None):
        """One request with only the given session cookie; same-origin Origin, so a refusal is for the reason meant."""
        headers = {"Cookie": f"{COOKIE}={cookie}", "Origin": self.console}
        return requests.request(method, urljoin(self.console + "/", url), headers=headers, data=data,
                                allow_redirects=False, timeout=HTTP_TIMEOUT)

    def sign_in_as(self, sub):
        r = requests.post(f"{self.issuer}/test/sign-in-as", json={"sub": sub}, timeout=HTTP_TIMEOUT)
        self.expect(r.ok, f"the test issuer refused sign-in-as {sub}: {r.status_code} {r.text[:200]}")

    def sign_in(self, sub, start_path):
        """Opens start_path without a session, expects /login, signs in through the issuer, lands on start_path."""
        self.sign_in_as(sub)
        self.driver.get(self.console + start_path)
        self.expect(urlsplit(self.driver.current_url).path == "/login",
                    f"{start_path} without a session did not lead to /login")
        self.loaded(f"login-{sub}")
        self.click_to(self.one("a#signin-oidc"), f"signed-in-{sub}")
        self.wait(self.path_is(start_path), f"the sign-in to land on {start_path}")
        self.expect(sub in self.text("#whoami"), f"#whoami is '{self.text('#whoami')}', not {sub}")

    # ---- the checks ------------------------------------------------------------------------------------------------
    def run(self):
        self.start_browser()
        d = self.driver

        self.check = "1 sign in as alice"
        self.sign_in("alice", "/")
        self.expect(self.text("h1") == "Overview", f"h1 is '{self.text('h1')}', not Overview")
        self.one("table#usage")
        for href in ("/", "/keys", "/applications", "/audit"):
            self.one(f'header a[href="{href}"]')
        cookie = self.session_cookie()
        self.expect(cookie.get("httpOnly"), f"{COOKIE} is not HttpOnly")
        self.expect(str(cookie.get("sameSite")).lower() == "lax", f"{COOKIE} SameSite is {cookie.get('sameSite')}")
        self.expect(cookie.get("path") == "/", f"{COOKIE} path is {cookie.get('path')}")

        self.check = "2 create application"
        self.click_to(self.one('header a[href="/applications"]'), "applications")
        self.click_to(self.one("a#new-application"), "new-application")
        self.fill("form#create-application input[name=name]", APPLICATION)
        self.select("form#create-application select[name=role]", "developer")
        self.fill("form#create-application input[name=key_pattern]", "orders-*")
        self.fill("form#create-application input[name=operations]", "encrypt,decrypt")
        self.submit("form#create-application", "application-created")
        self.expect(self.text("#new-client-id"), "#new-client-id is empty")
        self.expect(self.text("#new-secret"), "#new-secret is empty")
        self.click_to(self.one('header a[href="/applications"]'), "applications-listed")
        self.one(f'table#applications tr[data-application="{APPLICATION}"]')

        self.check = "3 create and rotate key"
        self.click_to(self.one('header a[href="/keys"]'), "keys")
        self.one("form#key-filter input[name=q]")
        self.click_to(self.one("a#new-key"), "new-key")
        self.fill("form#create-key input[name=name]", KEY)
        self.select("form#create-key select[name=purpose]", "encrypt")
        self.fill("form#create-key input[name=description]", "PII of orders (browser test)")
        self.submit("form#create-key", "key-created")
        self.wait(self.path_is(f"/keys/{KEY}"), f"the key's page /keys/{KEY}")
        self.expect(self.text("#notice"), "#notice is empty after creating the key")
        self.expect("ENABLED" in self.key_state(), f"#key-state is '{self.key_state()}', not ENABLED")
        self.expect(self.versions() == 1, f"{self.versions()} versions after creation, not 1")
        rotate_action = self.one("form#rotate-key").get_attribute("action")
        self.submit("form#rotate-key", "key-rotated")
        self.expect(self.versions() == 2, f"{self.versions()} versions after rotation, not 2")

        self.check = "4 schedule and cancel deletion"
        if not urlsplit(d.current_url).path == f"/keys/{KEY}":
            self.go(f"/keys/{KEY}", "key")
        button = self.one("#schedule-deletion-submit")
        self.expect(not button.is_enabled(), "#schedule-deletion-submit is enabled before the name is typed")
        self.one("form#schedule-deletion input[name=pending_days]")
        confirm = self.one("form#schedule-deletion input[name=confirm]")
        confirm.send_keys(KEY[:-1])
        self.expect(not button.is_enabled(), "#schedule-deletion-submit is enabled with a partial name typed")
        confirm.send_keys(KEY[-1])
        self.wait(lambda _: button.is_enabled(), "#schedule-deletion-submit to be enabled once the name is typed")
        self.click_to(button, "deletion-scheduled")
        self.expect("PENDING_DELETION" in self.key_state(), f"#key-state is '{self.key_state()}' after scheduling")
        self.submit("form#cancel-deletion", "deletion-cancelled")
        self.expect("PENDING_DELETION" not in self.key_state(), f"#key-state is '{self.key_state()}' after cancel")

        self.check = "5 policy"
        if not urlsplit(d.current_url).path == f"/keys/{KEY}":
            self.go(f"/keys/{KEY}", "key")
        self.click_to(self.one("a#edit-policy"), "policy")
        self.fill("form#policy textarea[name=rules]", INVALID_RULE)
        self.submit("form#policy", "policy-invalid", expect_status=422)
        self.expect(self.text("#form-error"), "#form-error is empty for a rule that does not compile")
        # A new key's policy is enforced (UNSPECIFIED means ENFORCE): leaving ENFORCE needs acknowledging too.
        self.expect_policy_form(None, "enforce", "a new key's policy")
        self.fill("form#policy textarea[name=rules]", VALID_RULE)
        self.select("form#policy select[name=enforcement]", "warn")
        self.acknowledge_and_save("policy-loosen-warning", "policy-saved-warn")
        self.click_to(self.one("a#edit-policy"), "policy-warn")
        self.expect_policy_form(VALID_RULE, "warn", "the saved policy")
        self.select("form#policy select[name=enforcement]", "enforce")
        self.acknowledge_and_save("policy-enforce-warning", "policy-saved",
                                  lambda: self.expect_policy_form(VALID_RULE, "enforce", "the re-shown policy form"))
        self.expect(self.text("#notice"), "#notice is empty after saving the policy")

        self.check = "6 audit"
        self.click_to(self.one('header a[href="/audit"]'), "audit")
        self.one("form#audit-filter")
        status = self.text("#chain-status").lower()
        self.expect(re.search(r"\bverified\b", status) and "not verified" not in status,
                    f"#chain-status is '{status}'")
        self.one("table#checkpoints")
        rows = [r.get_attribute("textContent") for r in d.find_elements(By.CSS_SELECTOR, "table#audit-events tbody tr")]
        self.expect(any("CreateKey" in r for r in rows), f"no CreateKey row among {len(rows)} audit events")
        self.expect(any("alice" in r for r in rows), f"no row mentioning alice among {len(rows)} audit events")
        export = self.one("a#export").get_attribute("href")
        self.expect(urlsplit(export).path == "/audit/export", f"a#export links to {export}")
        r = self.raw("GET", export, self.session_cookie()["value"])
        self.expect(r.status_code == 200, f"GET {export}: {r.status_code}")
        ctype = r.headers.get("content-type", "")
        self.expect(ctype.startswith("application/x-ndjson"), f"GET {export}: content-type {ctype}")
        lines = [line for line in r.text.splitlines() if line.strip()]
        self.expect(lines, f"GET {export}: no events")
        for n, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except ValueError as e:
                self.fail(f"GET {export}: line {n} is not JSON ({e}): {line[:200]}")

        self.check = "7 refusals as alice"
        alice = self.session_cookie()["value"]
        r = self.raw("POST", rotate_action, alice, data={})
        self.expect(r.status_code == 403, f"POST {rotate_action} without csrf: {r.status_code}, not 403")
        r = self.raw("POST", rotate_action, alice, data={"csrf": "not-the-token"})
        self.expect(r.status_code == 403, f"POST {rotate_action} with a wrong csrf: {r.status_code}, not 403")
        self.go(f"/keys/{KEY}", "key-after-refusals")
        self.expect(self.versions() == 2, f"{self.versions()} versions after refused rotations, not 2")
        other = f"/keys/{self.other_key}"
        r = self.raw("GET", other, alice)
        self.expect(r.status_code == 404, f"GET {other} (another tenant's key): {r.status_code}, not 404")
        self.go(other, "other-tenant-key", expect_status=404)

        self.check = "8 sign out"
        self.go("/", "overview")
        alice = self.session_cookie()["value"]
        old_csrf = self.one("form#logout input[name=csrf]").get_attribute("value")
        self.expect(old_csrf, "form#logout has an empty csrf")
        self.submit("form#logout", "signed-out")
        self.wait(self.path_is("/login"), "/login after signing out")
        r = self.raw("GET", "/keys", alice)
        self.expect(r.status_code == 303 and urlsplit(r.headers.get("location", "")).path == "/login",
                    f"GET /keys with the signed-out cookie: {r.status_code} {r.headers.get('location')}, "
                    "not 303 to /login")
        r = self.raw("POST", rotate_action, alice, data={"csrf": old_csrf})
        self.expect(r.status_code in (303, 403) and not 200 <= r.status_code < 300,
                    f"POST {rotate_action} with the signed-out cookie and its csrf: {r.status_code}")

        self.check = "9 victor, a viewer"
        self.sign_in("victor", "/keys")
        self.one(f'table#keys tr[data-key="{KEY}"]')
        self.absent("a#new-key", "a viewer is offered to create keys")
        self.go(f"/keys/{KEY}", "key-as-viewer")
        forms = [f for f in self.post_forms() if f != "logout"]
        self.expect(not forms, f"a viewer sees post forms: {forms}")
        self.absent("a#edit-policy", "a viewer is offered to edit the policy")
        self.click_to(self.one('header a[href="/applications"]'), "applications-as-viewer")
        self.absent("a#new-application", "a viewer is offered to create applications")
        victor = self.session_cookie()["value"]
        csrf = self.one("form#logout input[name=csrf]").get_attribute("value")
        r = self.raw("POST", rotate_action, victor, data={"csrf": csrf})
        self.expect(r.status_code == 403, f"POST {rotate_action} as victor with his csrf: {r.status_code}, not 403")
        self.go(f"/keys/{KEY}", "key-after-viewer-post")
        self.expect(self.versions() == 2, f"{self.versions()} versions after victor's refused rotation, not 2")

        print(f"console browser checks passed: {self.pages} pages checked, {self.axe_runs} axe runs, "
              f"screenshots in {self.shots}")


def describe(element):
    try:
        tag = element.tag_name
        ident = element.get_attribute("id") or element.get_attribute("href") or element.text.strip()[:40]
        return f"<{tag}> {ident}"
    except Exception:  # noqa: BLE001 - only for the message
        return "the element"


def main():
    run = Run()
    started = time.monotonic()
    try:
        run.run()
        return 0
    except Exception as e:  # noqa: BLE001 - any error fails the run, named with its check and page
        kind = "" if isinstance(e, CheckFailed) else f"{type(e).__name__}: "
        message = str(e) if isinstance(e, CheckFailed) else (getattr(e, "msg", None) or str(e)).strip()
        print(f"FAILED check '{run.check}' on page {run.page()}:\n  {kind}{message}", file=sys.stderr)
        if not isinstance(e, CheckFailed):
            traceback.print_exc(limit=3, file=sys.stderr)
        if run.driver is not None:
            try:
                run.driver.save_screenshot(os.path.join(run.shots, f"{run.pages + 1:02d}-FAILED.png"))
            except Exception:  # noqa: BLE001 - the failure above is what matters
                pass
        print(f"screenshots in {run.shots}", file=sys.stderr)
        return 1
    finally:
        if run.driver is not None:
            run.driver.quit()
        print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
