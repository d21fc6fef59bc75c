"""The lab in a real headless Chromium (Debian's chromium, driven by Playwright) against a real `lmscope lab`
subprocess on a free loopback port, with a random model."""
import pytest

pytest.importorskip("playwright", reason="the browser tests need Playwright's Python package (pip install playwright)")

from lmscope.lab.testing import browser, chromium_path, lab_process  # noqa: E402
from lab_support import MODEL, make_runs

if chromium_path() is None:
    pytest.skip("no chromium executable found (scripts/setup.sh --dev installs Debian's chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory, lab_model):
    runs = tmp_path_factory.mktemp("browser_runs")
    make_runs(runs, lab_model)
    log = open(runs.parent / "lab.log", "wb")
    with lab_process(MODEL, runs, log=log) as address:
        yield address
    log.close()


@pytest.fixture(scope="module")
def context():
    with browser() as ctx:
        yield ctx


@pytest.fixture
def page(context, url):
    p = context.new_page()
    errors = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(url)
    p.wait_for_selector("body[data-ready='1']")
    yield p
    p.close()
    assert not errors, errors


def test_prompt_heatmap_hover_and_click(page):
    page.fill("#wb-prompt", "")
    page.click("#wb-lens")
    page.wait_for_selector("#wb-form .err[data-err='prompt']:text-is('empty prompt')")
    page.fill("#wb-prompt", "hello <b>world</b>")
    page.click("#wb-lens")
    page.wait_for_selector("#wb-lens-plot[data-ready='1'] .heatmaplayer")
    assert page.text_content("#wb-form .err[data-err='prompt']") == ""
    box = page.locator("#wb-lens-plot .nsewdrag").first.bounding_box()
    # a random model's top tokens are often lone bytes that are not text; click a cell whose top token is
    for fx in (0.1, 0.3, 0.5, 0.7, 0.9):
        for fy in (0.1, 0.3, 0.5, 0.7, 0.9):
            x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
            page.mouse.move(x, y)
            page.wait_for_selector("#wb-hover table")
            assert page.locator("#wb-hover table tr").count() == 1 + 5          # header + the top-5
            top = page.text_content("#wb-hover table tr:nth-child(2) td")
            if top.strip('"').isalnum():
                break
        else:
            continue
        break
    assert "layer" in page.text_content("#wb-hover b")
    page.mouse.click(x, y)
    page.wait_for_selector("#wb-target-plot .scatterlayer")
    assert page.input_value("#wb-target") == top.strip('"')
    assert page.locator("#wb-lens-plot b:text('world')").count() == 0    # prompt text is never markup


def test_steering_slider_changes_the_generation(page):
    page.click("#tabs button[data-tab='steering']")
    page.select_option("#st-source", "set:sentiment")
    page.fill("#st-layer", "1")
    page.fill("#st-new", "8")

    def move(value):
        before = page.text_content("#st-kl")
        page.eval_on_selector("#st-coef", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); "
                                          "e.dispatchEvent(new Event('change')); }", str(value))
        page.wait_for_function("(b) => document.getElementById('st-kl').textContent !== b", arg=before)
        return page.text_content("#st-base"), page.text_content("#st-steered"), page.text_content("#st-kl")

    base0, steered0, kl0 = move(0)
    assert steered0 == base0 and "0.000e+0" in kl0
    base1, steered1, kl1 = move(2)
    assert base1 == base0 and steered1 != base1 and "coefficient 2" in kl1
    base2, steered2, _ = move(-2)
    assert base2 == base0 and steered2 not in (base2, steered1)
    assert page.text_content("#st-coef-value") == "-2"


def test_open_an_sae_feature(page):
    page.click("#tabs button[data-tab='sae']")
    page.fill("#sae-tokens", "1024")
    page.click("#sae-open")
    page.wait_for_selector("#sae-list tr.feat", timeout=60_000)
    n_all = page.locator("#sae-list tr.feat").count()
    first = page.locator("#sae-list tr.feat").first
    latent = first.get_attribute("data-latent")
    first.click()
    page.wait_for_selector(f"#sae-dash[data-latent='{latent}'] .ctx .centre")
    assert page.locator("#sae-dash .plot .main-svg").count() >= 1
    page.fill("#sae-search", "zzzz-no-such-token")
    assert page.locator("#sae-list tr.feat").count() == 0 < n_all


def test_click_a_circuit_node(page):
    page.click("#tabs button[data-tab='circuits']")
    page.select_option("#ci-task", label="task file: tasks/toy.jsonl")
    page.fill("#ci-n", "12")
    page.fill("#ci-heads", "3")
    page.select_option("#ci-method", "eap")
    page.click("#ci-find")
    page.wait_for_selector("#ci-graph[data-ready='1'] .scatterlayer", timeout=60_000)
    marker = page.locator("#ci-graph .scatterlayer .trace .points path").last
    box = marker.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_selector("#ci-node[data-node]")
    assert page.text_content("#ci-node h3").startswith("Node ")
    assert "faithfulness" in page.text_content("#ci-summary")


def test_start_and_cancel_a_long_job(page):
    page.click("#tabs button[data-tab='neuron']")
    page.fill("#ne-tokens", "2000000")
    page.click("#ne-run")
    page.wait_for_selector(".job.running:has-text('tok/s')", timeout=30_000)
    page.click(".job.running button.cancel")
    page.wait_for_selector(".job.cancelled")
    page.wait_for_selector("#ne-form .err[data-err='_']:has-text('cancelled')")
    page.fill("#ne-layer", "9")
    page.click("#ne-run")
    page.wait_for_selector("#ne-form .err[data-err='layer']:has-text('out of range')")
