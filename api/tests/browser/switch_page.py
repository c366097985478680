"""Click a carrier switch on the operators' page in headless Chromium and wait until the
page shows it acknowledged (the update arrives over server-sent events).

usage: switch_page.py URL TOKEN MODEM CARRIER SCREENSHOT
"""
import sys

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

import chromium  # beside this script


def main() -> int:
    url, token, modem, carrier, screenshot = sys.argv[1:6]
    driver = chromium.start(1200, 600)
    try:
        driver.get(f"{url}/#token={token}")
        # Every live update re-renders the table, so elements found a moment ago may be gone.
        wait = WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException])
        row = f'tr[data-modem="{modem}"]'
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
        assert "token=" not in driver.current_url, "the token is removed from the address bar"

        def choose_and_click(d):
            Select(d.find_element(By.CSS_SELECTOR, f"{row} select.target")).select_by_value(carrier)
            d.find_element(By.CSS_SELECTOR, f"{row} button.switch").click()
            return True

        wait.until(choose_and_click)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .request").text.startswith(f"{carrier}: acked"))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .carrier").text == carrier)
        driver.save_screenshot(screenshot)
        print(f"page: {modem} switched to {carrier}, acked; status: {driver.find_element(By.ID, 'status').text}")
        return 0
    except Exception as e:  # report what the page showed
        driver.save_screenshot(screenshot)
        print(f"page test failed: {e!r}\n--- page text ---\n{driver.find_element(By.TAG_NAME, 'body').text}", file=sys.stderr)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
