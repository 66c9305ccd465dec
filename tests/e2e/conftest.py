"""Shared for the end-to-end tests: a real browser (Debian's Chromium, driven by Selenium),
staff logins and waiting. Screenshots go to tests/artifacts/ (git-ignored)."""

import shutil
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Every end-to-end test module sets: pytestmark = E2E
E2E = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSWORD = "correct horse 42"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root in a sandbox-less container, with nothing reaching out to the network.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--lang=zh-TW",
        "--window-size=1300,1000",
    ):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": "zh-TW,zh"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def staff(username, group):
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def log_in(browser, live_server, username):
    from selenium.webdriver.common.by import By

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    browser.find_element(By.ID, "user-tools")  # waits (implicitly) until we are logged in


def wait_until(condition, seconds=5.0):
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except StaleElementReferenceException:
            pass  # the page put a new element in its place while we read it: look again
        except WebDriverException as error:
            # Chromium's flavour of the same race: the node went away between two calls.
            if "does not belong to the document" not in str(error):
                raise
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def screenshot(browser, name: str) -> Path:
    """Save what the browser shows as tests/artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path
