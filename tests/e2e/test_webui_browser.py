"""`lmdeploy serve gradio` on the embedded model, used from a real headless chromium."""

import time

import pytest

from .browser import chrome_driver, gradio_server

MAX_NEW_TOKENS = 24

# Records each distinct text of the last bot message as the page re-renders it.
WATCH_REPLY = """
window.seen = [];
new MutationObserver(() => {
  const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
  const text = bots.length ? bots[bots.length - 1].textContent.trim() : '';
  if (text && window.seen[window.seen.length - 1] !== text) window.seen.push(text);
}).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
"""
COUNT_MESSAGES = "return document.querySelectorAll('#chatbot [data-testid=user], #chatbot [data-testid=bot]').length"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def page():
    with gradio_server("--session-len", "1024") as url:
        driver = chrome_driver()
        try:
            driver.get(url)
            yield driver
        finally:
            driver.quit()


@pytest.mark.slow
def test_chat_streams_a_reply_and_reset_clears_it(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    find = page.find_element
    wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#message textarea"), 30, "the page")
    limit = find(By.CSS_SELECTOR, "#max_new_tokens input[type=number]")
    limit.clear()
    limit.send_keys(str(MAX_NEW_TOKENS), Keys.TAB)
    page.execute_script(WATCH_REPLY)

    find(By.CSS_SELECTOR, "#message textarea").send_keys("Tell me a story about a cat.", Keys.ENTER)
    send, reset = find(By.CSS_SELECTOR, "button#send"), find(By.CSS_SELECTOR, "button#reset")
    wait_for(lambda: not send.is_enabled(), 30, "Send to lock while the reply streams")
    assert not reset.is_enabled(), "Reset stays usable while the reply streams"
    wait_for(send.is_enabled, 60, "the reply to finish")

    seen = page.execute_script("return window.seen")
    screenshot = tmp_path / "webui-chat.png"
    page.save_screenshot(str(screenshot))
    print(f"screenshot of the chat: {screenshot}")
    assert len(seen) >= 2, f"the reply appeared in one piece, not streamed: {seen}"
    reply = seen[-1]
    assert 0 < len(reply.split()) <= MAX_NEW_TOKENS, f"the slider's limit was not applied: {reply}"
    assert page.execute_script(COUNT_MESSAGES) == 2  # the question and the reply

    reset.click()
    wait_for(lambda: page.execute_script(COUNT_MESSAGES) == 0, 10, "Reset to clear the chat")
