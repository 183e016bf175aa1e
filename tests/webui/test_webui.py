"""scripts/webui.py in a real browser (headless Chromium from the Debian packages, driven by selenium): upload a
photo, choose a model, restore, download; the download equals ``Restorer`` on the same image bit for bit. Bad
uploads and a model that fails to load give one-line messages and the server keeps serving; the page loads
nothing from outside the server. Without gradio or selenium (Python < 3.10, no ``.[webui]``) the tests are
skipped; Chromium is installed with apt when missing and the process may (root), else they are skipped saying so. With ``HINET_WEBUI_SCREENSHOT=path.png`` the page after a
run is saved there (how docs/webui.png is made); it is always saved under the test's tmp folder."""
import importlib.util
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest

from conftest import PY, REPO, save_model
from hinet_plugins.restore import Restorer

if importlib.util.find_spec('gradio') is None:  # looked up, not imported: the page runs in its own process
    pytest.skip("the web page needs gradio: pip install -e '.[webui]' (Python >= 3.10)", allow_module_level=True)
pytest.importorskip('selenium', reason="the browser test needs selenium: pip install -e '.[webui]'")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
NET = {'type': 'HINet', 'wf': 4, 'depth': 3}


def ensure_chromium():
    """Paths of chromium and chromedriver, installed with apt-get when missing and possible; else skip."""
    def found():
        return shutil.which('chromium'), shutil.which('chromedriver')
    if all(found()):
        return found()
    if os.geteuid() != 0 or not shutil.which('apt-get'):
        pytest.skip('chromium/chromium-driver are missing and cannot be installed here (apt-get as root): '
                    'apt-get install chromium chromium-driver')
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    for cmd in (['apt-get', 'update', '-qq'], ['apt-get', 'install', '-y', '-qq', 'chromium', 'chromium-driver']):
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"installing chromium failed ({' '.join(cmd)}): {proc.stdout.strip().splitlines()[-1:]}")
    if not all(found()):
        pytest.skip('chromium/chromedriver not on PATH after apt-get install')
    return found()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]




@pytest.fixture(scope='module')
def app(tmp_path_factory):
    """The page on 127.0.0.1:<free port> with three models: tiny-a, tiny-b (other weights) and broken (a checkpoint
    that does not fit its option file); yields (url, {label: option file})."""
    ensure_chromium()
    root = str(tmp_path_factory.mktemp('webui'))
    models = {'tiny-a': save_model(root, 'tiny-a', 0), 'tiny-b': save_model(root, 'tiny-b', 1),
              'broken': save_model(root, 'broken', 2, opt=dict(NET, wf=8))}
    port = free_port()
    log = open(os.path.join(root, 'server.log'), 'w')
    argv = [PY, os.path.join(REPO, 'scripts', 'webui.py'), '--port', str(port), '--device', 'cpu',
            '--max-megapixels', '0.01']  # 'huge' starts above 10000 pixels
    for path in models.values():
        argv += ['-opt', path]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}/'
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError('the page did not start:\n' + open(log.name).read()[-3000:])
            time.sleep(1)
    yield url, models, root
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope='module')
def browser(app, tmp_path_factory):
    chromium, driver_path = ensure_chromium()
    downloads = str(tmp_path_factory.mktemp('downloads'))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,1900'):
        options.add_argument(arg)
    options.add_experimental_option('prefs', {'download.default_directory': downloads,
                                              'download.prompt_for_download': False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def open_page(driver, url):
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#run'))


def upload(driver, box, paths):
    driver.find_element(By.CSS_SELECTOR, f'#{box} input[type=file]').send_keys('\n'.join(map(str, paths)))
    names = [os.path.basename(p) for p in paths]
    WebDriverWait(driver, 60).until(lambda d: all(
        d.find_elements(By.CSS_SELECTOR, f'#{box} td.filename[aria-label="{n}"]') for n in names))


def choose_model(driver, label):
    box = driver.find_element(By.CSS_SELECTOR, '#model input')
    driver.execute_script('arguments[0].scrollIntoView({block: "center"})', box)
    box.click()
    option = WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f'[role=option][aria-label="{label}"]'))
    driver.execute_script('arguments[0].scrollIntoView({block: "center"})', option)
    option.click()
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '#model input').get_attribute('value') == label)


def restore(driver, expect):
    """Press Restore; the status text once it contains ``expect``."""
    driver.find_element(By.CSS_SELECTOR, '#run').click()
    status = WebDriverWait(driver, 240).until(
        lambda d: (t := d.find_element(By.CSS_SELECTOR, '#status textarea').get_attribute('value')) and expect in t
        and t)
    return status


def photo(path):
    from skimage import data
    rgb = cv2.resize(data.astronaut(), (96, 80), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def test_upload_choose_restore_download(app, browser, tmp_path):
    url, models, _ = app
    rgb = photo(tmp_path / 'astronaut.png')
    open_page(browser, url)
    upload(browser, 'images', [tmp_path / 'astronaut.png'])
    upload(browser, 'truths', [tmp_path / 'astronaut.png'])  # the input as its own ground truth: a known PSNR
    choose_model(browser, 'tiny-b')
    status = restore(browser, 'restored with')
    assert status.splitlines()[0].startswith('1 of 1 image(s) restored with HINet from') and 'tiny-b.pth' in status
    link = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, '#downloads a[download]'))
    assert link.get_attribute('download') == 'astronaut_restored.png'
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(  # the slider shows input and result, loaded
        "const i = document.querySelectorAll('#slider img');"
        "return i.length >= 2 && Array.from(i).every(x => x.complete && x.naturalWidth === 96);"))
    shot = tmp_path / 'webui.png'
    browser.save_screenshot(str(shot))
    if os.environ.get('HINET_WEBUI_SCREENSHOT'):
        shutil.copyfile(shot, os.environ['HINET_WEBUI_SCREENSHOT'])
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [u for u in fetched if not u.startswith((url, 'data:', 'blob:'))]
    assert fetched and not outside, outside  # the page loads nothing from the internet (assets, fonts)
    link.click()
    target = os.path.join(browser.downloads, 'astronaut_restored.png')
    WebDriverWait(browser, 60).until(lambda d: os.path.isfile(target) and os.path.getsize(target) > 0
                                     and not os.path.exists(target + '.crdownload'))
    downloaded = cv2.cvtColor(cv2.imread(target, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    expected = Restorer.load(opt=models['tiny-b'])(rgb)
    other = Restorer.load(opt=models['tiny-a'])(rgb)
    assert downloaded.dtype == np.uint8 and np.array_equal(downloaded, expected)
    assert not np.array_equal(downloaded, other), 'the chosen model, not the first one, restored it'
    from basicsr.metrics import calculate_psnr
    psnr = calculate_psnr(expected.astype(np.float64), rgb.astype(np.float64), 0)
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, '#metrics td')]
    assert cells[:2] == ['astronaut.png', f'{psnr:.2f}'], cells


def test_bad_uploads_and_a_failing_model_are_one_line_messages(app, browser, tmp_path):
    url, _, _ = app
    (tmp_path / 'notes.png').write_text('this is not an image\n')
    (tmp_path / 'empty.png').write_bytes(b'')
    photo(tmp_path / 'good.png')
    cv2.imwrite(str(tmp_path / 'huge.png'), np.zeros((128, 128, 3), np.uint8))
    open_page(browser, url)
    upload(browser, 'images', [tmp_path / n for n in ('notes.png', 'empty.png', 'huge.png', 'good.png')])
    choose_model(browser, 'tiny-a')
    status = restore(browser, 'notes.png')
    lines = status.splitlines()
    assert lines[0].startswith('1 of 4 image(s) restored with HINet from') and lines[1:] == [
        'notes.png: not an image (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .ppm, .pgm)',
        'empty.png: the file is empty', 'huge.png: 128x128 is too large (at most 0.01 megapixels)'], status
    choose_model(browser, 'broken')
    status = restore(browser, "model 'broken'")
    assert len(status.splitlines()) == 1 and "checkpoint '" in status and 'does not fit' in status, status
    choose_model(browser, 'tiny-a')  # the server still serves
    status = restore(browser, '1 of 4 image(s) restored with HINet')
    assert 'tiny-a.pth' in status
