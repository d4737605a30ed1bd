"""Drives the dashboard in headless Chromium (Debian's chromium and chromedriver, through
Selenium from PyPI): logs in with a token, opens every page, fails on any console
error, saves a screenshot of each; then, on the masters page, waits for a line `go` on
stdin (the test has killed the leader) and reports how long the page took to show
another leader, without a reload. On the tasks page it also tails a task's log.

Usage: dashboard.py URL TOKEN SCREENSHOT_DIR
Prints `leader <text>` when ready, then `new-leader <text> <ms>`.
"""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, token, shots = sys.argv[1:4]
os.makedirs(shots, exist_ok=True)
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
          # The cluster's CA is not the system's: the page is what is tested here.
          "--ignore-certificate-errors"):
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
d.set_page_load_timeout(20)


def console_errors():
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def wait(what, ok, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = ok()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.05)
    d.save_screenshot(os.path.join(shots, "failed.png"))
    raise SystemExit(f"timed out: {what}; console: {console_errors()}")


try:
    d.get(f"{url}/ui/")
    wait("the login form", lambda: d.find_element(By.ID, "login").is_displayed())
    d.save_screenshot(os.path.join(shots, "dashboard-login.png"))
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait("logged in", lambda: d.find_element(By.ID, "page").is_displayed())
    errors = console_errors()
    assert not errors, f"console errors at login: {errors}"
    for page, shows in [("masters", "leader"), ("agents", "content"), ("services", "content"), ("tasks", "content"),
                        ("jobs", "content"), ("networks", "content"), ("events", "feed")]:
        d.get(f"{url}/ui/#/{page}")
        wait(f"the {page} page", lambda: d.find_element(By.ID, "page").get_attribute("data-loaded") == page)
        wait(f"the {page} page's {shows}", lambda: d.find_element(By.ID, shows).is_displayed())
        if page == "events":
            wait("an event in the feed", lambda: d.find_elements(By.CSS_SELECTOR, "#feed li"))
        if page == "tasks":
            # A task's log, tailed through the masters' log relay.
            wait("a task's Tail button", lambda: d.find_elements(By.XPATH, "//button[text()='Tail']"))
            d.find_elements(By.XPATH, "//button[text()='Tail']")[0].click()
            wait("the task's log", lambda: "serving" in d.find_element(By.ID, "log-text").text)
        time.sleep(1.5)  # two samples: the charts have a line
        text = d.find_element(By.ID, "content").text
        assert "Could not read" not in text, f"{page}: {text}"
        d.save_screenshot(os.path.join(shots, f"dashboard-{page}.png"))
        errors = console_errors()
        assert not errors, f"console errors on {page}: {errors}"
        print("page", page, "ok", flush=True)
    d.get(f"{url}/ui/#/masters")
    before = wait("a leader", lambda: d.find_element(By.ID, "leader").text if "(" in d.find_element(By.ID, "leader").text else None)
    print("leader", before, flush=True)
    assert sys.stdin.readline().strip() == "go"
    t0 = time.time()
    after = wait("another leader", lambda: (lambda t: t if "(" in t and t != before else None)(
        d.find_element(By.ID, "leader").text), timeout=20)
    print("new-leader", after, int((time.time() - t0) * 1000), flush=True)
    d.save_screenshot(os.path.join(shots, "dashboard-masters-after-failover.png"))
finally:
    d.quit()
