"""The Chat tab: a conversation about images, streamed, with the latent of the image under discussion."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import gradio as gr

from .common import (EXAMPLES_DIR, IMAGE_LABEL, MODEL_QUEUE, Refresh, checked, guarded, image_input, number_slider,
                     seed_box, settle, user_error)
from .latent_panel import LatentPanel, Tab, latent_panel

CHAT_EXAMPLES = (
    ("shapes_2.png", "what shape is the purple object?"),
    ("shapes_1.png", "what color is the star?"),
    ("shapes_3.png", "how many objects are there?"),
)
EMPTY_REPLY = "*(the model ended its reply without any text)*"
NO_CHAT_IMAGE = "No image in the conversation yet."
NO_IMAGE_REPLY = ("There is no image in this conversation yet, so I cannot answer that. Attach one (the paper clip "
                  "in the message box, or `image` through the API) and ask again.")
# Questions about what an image shows; asked with no image in the conversation they get NO_IMAGE_REPLY.
IMAGE_QUESTION = re.compile(r"\b(image|picture|photo|see|shown?|colou?rs?|shapes?|circles?|squares?|triangles?|"
                            r"stars?|objects?|how many|is there|are there|left|right|above|below|this)\b", re.I)


def needs_image(text: str) -> bool:
    return bool(IMAGE_QUESTION.search(text or ""))


def _is_image_file(file: dict) -> bool:
    mime = file.get("mime_type") or ""
    return mime.startswith("image/") or Path(file.get("path", "")).suffix.lower() in {
        ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def history_to_messages(history: list[dict]) -> list[dict]:
    """Gradio Chatbot value (normalised message dicts) -> HydraPipeline.chat messages."""
    messages = []
    for message in history or []:
        content = message.get("content")
        content = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        parts = []
        for part in content:
            if part.get("type") == "text" and part.get("text") and part["text"] != EMPTY_REPLY:
                parts.append({"type": "text", "text": part["text"]})
            elif part.get("type") == "file" and _is_image_file(part.get("file") or {}):
                parts.append({"type": "image", "image": part["file"]["path"]})
        if parts:
            messages.append({"role": message["role"], "content": parts})
    return messages


def latest_image(history: list[dict]) -> str | None:
    """Path of the most recent image in the conversation, if any."""
    for message in reversed(history_to_messages(history)):
        for part in reversed(message["content"]):
            if part["type"] == "image":
                return part["image"]
    return None



class ChatTab(Tab):
    @guarded("chat")
    def add_user_message(self, message: dict | None, history: list | None):
        """The user's turn -> (message box, conversation). Its text is checked first (a problem leaves the
        box as it was, for editing); then its images are decoded: the turn goes into the conversation
        without any image that cannot be read, and the message says why (the model is not asked)."""
        from hydra_core.pipeline import MAX_MESSAGE_CHARS, check_text, to_pil

        message = message if isinstance(message, dict) else {}
        text = message.get("text") or ""
        files = [f if isinstance(f, str) else (f or {}).get("path") for f in message.get("files") or []]
        if not text.strip() and not files:
            raise user_error("Type a message or attach an image.")
        if text.strip():
            text = check_text("the message", text.strip(), MAX_MESSAGE_CHARS)
        good, problems = [], []
        for path in files:
            try:
                to_pil(path)
                good.append(path)
            except ValueError as error:
                problems.append(str(error))
        content = [{"path": path} for path in good] + ([text] if text.strip() else [])
        history = list(history or [])
        if problems:
            if content:
                history.append({"role": "user", "content": content})
            yield gr.MultimodalTextbox(value=None, interactive=True), history
            raise ValueError("; ".join(problems) + (". Your message is kept in the conversation without it; "
                             "attach a readable image and ask again." if content else "."))
        yield gr.MultimodalTextbox(value=None, interactive=False), history + [{"role": "user", "content": content}]

    def stream_reply(self, messages: list[dict], max_new_tokens, temperature, top_p, seed,
                     request: gr.Request | None = None) -> Iterator[str]:
        """The growing reply text. A question about an image, with none in the conversation, is answered
        NO_IMAGE_REPLY without asking the model (a small model would otherwise guess)."""
        max_new_tokens, temperature, top_p, seed = checked(max_new_tokens=max_new_tokens, temperature=temperature,
                                                           top_p=top_p, seed=seed)
        has_image = any(part["type"] == "image" for m in messages for part in m["content"])
        question = " ".join(part.get("text", "") for part in (messages[-1]["content"] if messages else [])
                            if part["type"] == "text")
        if not has_image and needs_image(question):
            yield NO_IMAGE_REPLY
            return
        reply = ""
        start = time.perf_counter()
        for piece in self.device.chat(messages, max_new_tokens, temperature, top_p, seed):
            reply += piece
            yield reply
        self.record(request, "chat", time.perf_counter() - start)

    @guarded("chat")
    def chat_stream(self, history: list, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                    request: gr.Request = None):
        """UI chat: the conversation with the assistant's reply growing at its end. On a failure the
        conversation keeps the user's turn (and any partial reply) and the error is raised after it."""
        messages = history_to_messages(history)
        history = history + [{"role": "assistant", "content": EMPTY_REPLY}]  # shown if no text ever comes
        try:
            for reply in self.stream_reply(messages, max_new_tokens, temperature, top_p, seed, request):
                history[-1]["content"] = reply
                yield history
        except Exception:
            yield history[:-1] if history[-1]["content"] == EMPTY_REPLY else history
            raise
        yield history

    @guarded("showing the chat image's latent")
    def chat_panel(self, history: list | None) -> list:
        path = latest_image(history or [])
        if path is None:
            return LatentPanel.empty(NO_CHAT_IMAGE)
        latent = self.device.encode(path)[0]
        return self.panel(latent, f"Latent of the most recent image ({Path(path).name})",
                          "hydra_chat_image_latent", source="chat", image=Path(path).name)

    @guarded("chat")
    def chat(self, message: str = "", image: str | None = None, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, request: gr.Request = None):
        """Ask HYDRA about an image (one user turn, no history); the reply streams.

        Args:
            message: the question or message.
            image: an optional image the message is about.
            max_new_tokens: the most tokens in the reply (1-256).
            temperature: sampling temperature; 0 decodes greedily (0-2).
            top_p: nucleus sampling threshold (0.05-1).
            seed: sampling seed.

        Returns:
            the assistant's reply text.
        """
        if message is not None and not isinstance(message, str):
            raise ValueError(f"message must be text, got {type(message).__name__}")
        content = ([{"type": "image", "image": image}] if image else []) + (
            [{"type": "text", "text": message}] if (message or "").strip() else [])
        if not content:
            raise user_error("Send a message, an image, or both.")
        reply = ""
        for reply in self.stream_reply([{"role": "user", "content": content}], max_new_tokens, temperature,
                                       top_p, seed, request):
            yield reply
        yield reply

    @staticmethod
    def clear_chat() -> list:
        return [[], gr.MultimodalTextbox(value=None, interactive=True), *LatentPanel.empty(NO_CHAT_IMAGE)]


def build(h: ChatTab, refresh: Refresh) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=440, elem_id="chatbot",
                                 placeholder="Attach an image and ask about it.")
            textbox = gr.MultimodalTextbox(file_types=["image"], sources=["upload"], show_label=False,
                                           placeholder=f"Type a message; attach or paste an image ({IMAGE_LABEL})…",
                                           elem_id="chat-input")
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", size="sm", elem_id="chat-stop")
                clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
            gr.Examples([[{"text": text, "files": [str(EXAMPLES_DIR / name)]}] for name, text in CHAT_EXAMPLES
                         if (EXAMPLES_DIR / name).is_file()], inputs=[textbox], label="Examples")
            with gr.Accordion("Sampling", open=False):
                max_new_tokens = number_slider("max_new_tokens", 64, 1, "Max new tokens")
                temperature = number_slider("temperature", 0.0, 0.05, "Temperature (0 = greedy)")
                top_p = number_slider("top_p", 1.0, 0.05, "Top-p")
                seed = seed_box("Sampling seed")
        with gr.Column(scale=2):
            panel = latent_panel("Latent of the image under discussion", "chat-latent")
    # Inputs and output of the public /chat endpoint: a plain message + optional image, no history.
    api_message = gr.Textbox(label="message", visible=False)
    api_image = image_input(label="image", visible=False)
    api_reply = gr.Textbox(label="reply", visible=False)
    api_trigger = gr.Button(visible=False)

    sampling = [max_new_tokens, temperature, top_p, seed]
    # A generator (so it is queued, outside the model's slot): on an unreadable image it shows the turn, then fails.
    submitted = settle(textbox.submit(h.add_user_message, [textbox, chatbot], [textbox, chatbot],
                                      api_visibility="private", concurrency_limit=None), [textbox, chatbot])
    streaming = submitted.success(h.chat_stream, [chatbot, *sampling], chatbot, api_visibility="private",
                                  **MODEL_QUEUE)
    enable = {"fn": lambda: gr.MultimodalTextbox(interactive=True), "inputs": None, "outputs": textbox,
              "queue": False, "api_visibility": "private"}
    # A failed reply: the conversation keeps what was last shown (the user's turn), the box unlocks.
    streaming.failure(lambda: [gr.skip(), gr.MultimodalTextbox(interactive=True)], None, [chatbot, textbox],
                      queue=False, show_progress="hidden", api_visibility="private")
    refresh(settle(streaming.then(**enable).then(h.chat_panel, [chatbot], panel.outputs, api_visibility="private",
                                                 **MODEL_QUEUE), panel.outputs))
    stop.click(cancels=[streaming], **enable)
    for clearing in (clear.click, chatbot.clear):  # the button and the chatbot's own trash icon
        clearing(h.clear_chat, None, [chatbot, textbox, *panel.outputs], queue=False, api_visibility="private",
                 cancels=[streaming])
    refresh(api_trigger.click(h.chat, [api_message, api_image, *sampling], api_reply, api_name="chat",
                              **MODEL_QUEUE, api_description="One user turn (a message and/or an image, no "
                              "history) -> the assistant's reply; streams with Client.submit, predict returns "
                              "the full text. temperature 0 decodes greedily."))

