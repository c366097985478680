"""Debian's headless Chromium through chromedriver, as the page tests drive it: no sandbox
(root), no GPU, and none of the background connections a closed network refuses."""
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def start(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--window-size={width},{height}",
        "--user-data-dir=" + tempfile.mkdtemp(prefix="switchyard-chromium-"),
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
