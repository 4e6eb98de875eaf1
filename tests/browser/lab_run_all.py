"""A reader's Run All, in a real browser: JupyterLab started as `make lab` starts it, headless
Chromium (Debian's `chromium` and `chromium-driver`) driven by selenium, opens notebooks at
smoke scale, runs all their cells from the Run menu, and checks that no cell shows an error,
that every cell ran, and that Table 1 rendered; then saves each notebook from the File menu and
checks that `git status` stays clean (the lab writes the .ipynb, which git ignores, and its
paired .py, which must come out as committed). Screenshots go to --screenshots.

    make browser-test          # or: python tests/browser/lab_run_all.py --notebooks 01_data_overview 02_table1

Not collected by pytest (it takes minutes and needs a browser); `make browser-test` runs it.
It leaves the notebooks as they were (autosave is off; after the save check both files of the
pair get their bytes back) and keeps its runs in a temporary cache.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

PROJECT = Path(__file__).resolve().parents[2]
CHECKS = {"02_table1": ("Table 1", ["MEM-3", "i2t_MedR", "Random"])}
"""Per notebook: a table that must render, and words it must contain."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_lab(port: int, token: str, workdir: Path) -> subprocess.Popen:
    """`make lab` with a fixed port and token, no browser, autosave off, a temporary run cache."""
    settings = workdir / "lab-settings" / "@jupyterlab"
    for extension, file, values in (("docmanager-extension", "plugin", {"autosave": False}),
                                    ("notebook-extension", "tracker", {"windowingMode": "none"}),
                                    ("apputils-extension", "notification", {"fetchNews": "false"})):
        (settings / extension).mkdir(parents=True)
        (settings / extension / f"{file}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(workdir / "lab-settings"),
           "MMUE_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    flags = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
             f"--IdentityProvider.token={token} --ServerApp.port_retries=0")
    return subprocess.Popen(["make", "-s", "lab", f"LAB_FLAGS={flags}"], cwd=PROJECT, env=env,
                            stdout=open(workdir / "lab.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(port: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise TimeoutError(f"JupyterLab did not listen on {port} within {timeout} s:\n{log.read_text()[-3000:]}")


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options)


def click_menu(driver: webdriver.Chrome, menu: str, item: str) -> None:
    wait = WebDriverWait(driver, 30)
    wait.until(expected_conditions.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//div[text()='{menu}']]"))).click()
    wait.until(expected_conditions.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class,'lm-Menu-item')][.//div[text()='{item}']]"))).click()


def run_all(driver: webdriver.Chrome, base: str, token: str, name: str, timeout: float, shots: Path) -> dict:
    """Open `name`, Run All Cells, wait until every code cell has run; what the page shows."""
    driver.get(f"{base}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={token}")
    wait = WebDriverWait(driver, 120)
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")),
               message=f"{name} did not open")
    wait.until(lambda d: "idle" in d.find_element(By.CSS_SELECTOR, ".jp-Notebook-toolbarKernelStatus, "
                                                  ".jp-KernelStatus").get_attribute("outerHTML").lower()
               if d.find_elements(By.CSS_SELECTOR, ".jp-Notebook-toolbarKernelStatus, .jp-KernelStatus") else True,
               message=f"{name}: the kernel did not start")
    time.sleep(3)
    started = time.time()
    click_menu(driver, "Run", "Run All Cells")

    def prompts() -> list[str]:
        return [p.text.strip() for p in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]

    def finished(_) -> bool:
        shown = prompts()
        return bool(shown) and all(p.startswith("[") and p not in ("[ ]:", "[*]:", "[]:") for p in shown)

    WebDriverWait(driver, timeout, poll_frequency=2).until(
        finished, message=f"{name}: Run All did not finish within {timeout:.0f} s; prompts {prompts()}")
    seconds = time.time() - started
    time.sleep(2)
    outputs = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
    errors = [o.text[:500] for o in outputs
              if "Traceback" in o.text or o.get_attribute("data-mime-type") == "application/vnd.jupyter.error"]
    tables = [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output table")]
    stderr = [o.text[:300] for o in outputs if o.get_attribute("data-mime-type") == "application/vnd.jupyter.stderr"]
    images = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
    cells = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
    for index, cell in enumerate(cells):
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", cell)
        time.sleep(0.5)
        driver.save_screenshot(str(shots / f"{name}-cell{index:02d}.png"))
    return {"notebook": name, "seconds": round(seconds), "cells": len(prompts()), "prompts": prompts(),
            "errors": errors, "tables": len(tables), "table_text": tables, "images": len(images),
            "stderr": stderr}


def save_and_git_status(driver: webdriver.Chrome, name: str) -> str:
    """Save the open notebook from the File menu; `git status --porcelain` of the notebooks folder."""
    pair = [PROJECT / "notebooks" / f"{name}{suffix}" for suffix in (".ipynb", ".py")]
    before = [path.stat().st_mtime_ns for path in pair]
    click_menu(driver, "File", "Save Notebook")
    WebDriverWait(driver, 60).until(lambda _: all(path.stat().st_mtime_ns != mtime for path, mtime in zip(pair, before)),
                                    message=f"{name}: the lab did not write both files of the pair (.ipynb, .py)")
    time.sleep(2)
    return subprocess.run(["git", "status", "--porcelain", "--", str(PROJECT / "notebooks")], cwd=PROJECT,
                          capture_output=True, text=True, check=True).stdout.strip()


def check_report(driver: webdriver.Chrome, index: Path, shots: Path) -> list[str]:
    """Open the report's index (`make report`) and every page it links; what is wrong with them."""
    problems = []
    driver.get(index.as_uri())
    links = [(a.text, a.get_attribute("href")) for a in driver.find_elements(By.CSS_SELECTOR, "li a")]
    driver.save_screenshot(str(shots / "report-index.png"))
    if not links:
        return [f"{index}: links no notebook"]
    for name, href in links:
        driver.get(href)
        time.sleep(1)
        shown = len(driver.find_elements(By.CSS_SELECTOR, "table, img"))
        driver.save_screenshot(str(shots / f"report-{name}.png"))
        if not shown:
            problems.append(f"report page {name} shows no table or figure")
    return problems


def plan_timeout(name: str) -> float:
    """Seconds a notebook's Run All may take: its measured smoke hours (params/smoke/run_hours.yaml,
    the CPU to itself) ten times over, for a machine busy with other jobs, plus two minutes to start."""
    hours = {}
    for line in (PROJECT / "params" / "smoke" / "run_hours.yaml").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip() and not line.startswith("#"):
            hours[key.strip()] = float(value)
    return 120 + 10 * 3600 * hours.get(name, 0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", nargs="+", default=["01_data_overview", "02_table1", "04_figure4"])
    parser.add_argument("--timeout", type=float,
                        help="seconds per notebook's Run All (default: from the smoke plan, see plan_timeout)")
    parser.add_argument("--screenshots", type=Path, default=Path(tempfile.gettempdir()) / "mmue-browser-test")
    parser.add_argument("--report", type=Path, help="also open this report index (make report) and every page it links")
    args = parser.parse_args()
    args.screenshots.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    failures = []
    with tempfile.TemporaryDirectory(prefix="mmue-lab-") as folder:
        workdir = Path(folder)
        lab = start_lab(port, token, workdir)
        driver = None
        try:
            wait_for_server(port, lab, workdir / "lab.log")
            for name in args.notebooks:
                driver = browser()
                seen = run_all(driver, f"http://127.0.0.1:{port}", token, name, args.timeout or plan_timeout(name),
                               args.screenshots)
                pair = [PROJECT / "notebooks" / f"{name}{suffix}" for suffix in (".ipynb", ".py")]
                originals = [path.read_bytes() for path in pair]
                try:
                    status = save_and_git_status(driver, name)
                    (args.screenshots / f"saved-{name}.ipynb").write_bytes(pair[0].read_bytes())
                finally:
                    for path, original in zip(pair, originals):
                        path.write_bytes(original)
                if status:
                    failures.append(f"{name}: saving it in the lab left git status {status!r}")
                driver.quit()
                driver = None
                print(json.dumps({k: v for k, v in seen.items() if k not in ("table_text", "prompts")}), flush=True)
                if seen["errors"]:
                    failures.append(f"{name}: error output: {seen['errors']}")
                if name in CHECKS:
                    title, words = CHECKS[name]
                    if not any(all(word in text for word in words) for text in seen["table_text"]):
                        failures.append(f"{name}: {title} did not render (tables: {seen['table_text'][:2]})")
            if args.report:
                driver = browser()
                failures += check_report(driver, args.report.resolve(), args.screenshots)
                driver.quit()
                driver = None
        except (WebDriverException, TimeoutError, RuntimeError) as error:
            if driver is not None:
                driver.save_screenshot(str(args.screenshots / "failure.png"))
            failures.append(f"{type(error).__name__}: {error}")
        finally:
            if driver is not None:
                driver.quit()
            os.killpg(lab.pid, 15)
            lab.wait(timeout=30)
    print(f"screenshots in {args.screenshots}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print("browser test: " + ("failed" if failures else f"Run All of {', '.join(args.notebooks)} showed no error"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
