"""The chat page: a conversation with streamed replies, a Reset button and the generation
sliders. Each callback calls the WebChatService and only maps its values to widgets."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ...application.ports import ChatSettings
from ...application.web_chat import WebChatService
from ...domain.errors import ChatTurnFailed, InvalidArgument, LMDeployError

EXTRA = "serve"
Messages = list[dict[str, str]]


class GradioMissing(LMDeployError, ImportError):
    def __init__(self) -> None:
        super().__init__(
            f"the web UI needs gradio, which is not installed: pip install 'lmdeploy[{EXTRA}]'"
        )


def require_gradio() -> ModuleType:
    try:
        import gradio
    except ImportError as exc:
        raise GradioMissing() from exc
    return gradio


def build_demo(service: WebChatService) -> Any:
    """The gr.Blocks page over `service`; one session per browser tab."""
    gr = require_gradio()

    def chat(
        message: str,
        history: Messages,
        session_id: int,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
    ) -> Iterator[tuple[Any, Messages, Messages, Any, Any]]:
        """Input and Reset stay locked while the reply streams: a busy session takes no second
        turn, and a reset cannot race the reply's last update. A turn that fails leaves the
        conversation as it was and the message in the box."""
        settings = ChatSettings(int(max_new_tokens), float(temperature), float(top_p))
        before, asked = history, [*history, {"role": "user", "content": message}]
        locked, unlocked = gr.update(interactive=False), gr.update(interactive=True)
        try:
            for text in service.reply(session_id, message, settings):
                history = [*asked, {"role": "assistant", "content": text}]
                yield gr.update(value="", interactive=False), history, history, locked, locked
        except (ChatTurnFailed, InvalidArgument) as exc:
            gr.Warning(str(exc))
            yield gr.update(value=message, interactive=True), before, before, unlocked, unlocked
            return
        yield unlocked, history, history, unlocked, unlocked

    def reset(session_id: int) -> tuple[Messages, Messages, str]:
        service.reset(session_id)
        return [], [], ""

    with gr.Blocks(title="LMDeploy Playground", analytics_enabled=False) as demo:
        # A closed tab's conversation would hold KV cache forever: gradio deletes the tab's
        # state (an hour after it closes), and this ends the session with it.
        session_id = gr.State(None, delete_callback=_ender(service))
        history = gr.State([])
        gr.Markdown("## LMDeploy Playground")
        chatbot = gr.Chatbot(label=service.model_name, elem_id="chatbot", height=480)
        message = gr.Textbox(
            placeholder="Please input the instruction", label="Instruction", elem_id="message"
        )
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            reset_button = gr.Button("Reset", elem_id="reset")
        with gr.Row():
            max_new_tokens = gr.Slider(
                1, 2048, value=512, step=1, label="Maximum new tokens", elem_id="max_new_tokens"
            )
            top_p = gr.Slider(0.01, 1, value=0.8, step=0.01, label="Top_p")
            temperature = gr.Slider(0.01, 1.5, value=0.7, step=0.01, label="Temperature")
        inputs = [message, history, session_id, max_new_tokens, temperature, top_p]
        outputs = [message, history, chatbot, send, reset_button]
        message.submit(chat, inputs, outputs)
        send.click(chat, inputs, outputs)
        reset_button.click(reset, [session_id], [history, chatbot, message])
        chatbot.clear(reset, [session_id], [history, chatbot, message])  # its trash icon
        demo.load(service.open_session, None, [session_id])
    return demo


def _ender(service: WebChatService):
    def end(session_id: int | None) -> None:
        if session_id is not None:
            service.reset(session_id)

    return end


def launch(demo: Any, server_name: str, server_port: int, share: bool, concurrency: int) -> None:
    """Serve until interrupted. 'huggingface-space' lets the Space choose the address."""
    queued = demo.queue(default_concurrency_limit=concurrency, max_size=100, api_open=False)
    if server_name == "huggingface-space":
        queued.launch(share=share)
        return
    print(f"lmdeploy gradio: serving on http://{server_name}:{server_port}", flush=True)
    queued.launch(server_name=server_name, server_port=server_port, share=share, max_threads=10)
