"""Open a modem on the operators' page in headless Chromium and check its live chart: the
points it is drawn from sit at exactly the sensor times sent, the anomaly is marked at its
time, the switches made earlier are on the same time axis, and the switch history lists
them with their state changes.

usage: chart_page.py URL TOKEN MODEM TIMES_CSV ANOMALY_T SCREENSHOT
"""
import json
import sys

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import chromium  # beside this script


def main() -> int:
    url, token, modem, times_csv, anomaly_t, screenshot = sys.argv[1:7]
    sent = [int(t) for t in times_csv.split(",")]
    driver = chromium.start(1000, 1100)
    try:
        driver.get(f"{url}/#token={token}")
        wait = WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException])
        show = f'tr[data-modem="{modem}"] button.show'
        def click(d):  # the table is re-rendered on every update: find and click at once
            d.find_element(By.CSS_SELECTOR, show).click()
            return not d.find_element(By.ID, "detail").get_attribute("hidden")
        wait.until(click)

        # The chart is redrawn on every update: read one drawing whole, again if it is replaced.
        chart = 'svg.chart[data-sensor="imu"]'
        def drawing(d):
            svg = d.find_element(By.CSS_SELECTOR, chart)
            points = json.loads(svg.get_attribute("data-points"))
            return {
                "times": [t for t, _ in points],
                "vertices": len(svg.find_element(By.CSS_SELECTOR, "polyline.line").get_attribute("points").split()),
                "anomalies": [c.get_attribute("data-t") for c in svg.find_elements(By.CSS_SELECTOR, "circle.anomaly")],
                "switches": len(svg.find_elements(By.CSS_SELECTOR, "line.switch")),
                "ends": len(svg.find_elements(By.CSS_SELECTOR, "line.switch-end")),
            }
        seen = {}
        def complete(d):
            seen.update(drawing(d))
            return seen["times"] == sent and seen["anomalies"] == [anomaly_t] and seen["switches"] > 0
        try:
            wait.until(complete)
        except Exception:
            raise AssertionError(f"chart drawn from {seen}")
        assert seen["vertices"] == len(sent), seen
        assert seen["ends"] > 0, f"the switches' ends are annotated too: {seen}"
        switches = seen["switches"]

        rows = "#history tbody tr"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) >= 3)
        first = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, rows)[0].text)
        assert "acked" in first and "requested" in first, first
        driver.save_screenshot(screenshot)
        print(f"chart: {len(sent)} points at their sensor times, anomaly at {anomaly_t}, "
              f"{switches} switch annotations; history: {len(driver.find_elements(By.CSS_SELECTOR, rows))} requests")
        return 0
    except Exception as e:  # report what the page showed
        driver.save_screenshot(screenshot)
        print(f"chart page test failed: {e!r}\n--- page text ---\n{driver.find_element(By.TAG_NAME, 'body').text}", file=sys.stderr)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
