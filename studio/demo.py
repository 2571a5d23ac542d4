"""The whole page: a status line, "About this model", and one tab per module."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from hydra_core.eval.report import about_model

from . import chat_tab, compare_tab, generate_tab, reconstruct_tab
from .common import FILE_MAX_AGE_S, QUEUE_SIZE, launch_kwargs
from .latent_panel import Studio


def build_demo(pipeline) -> gr.Blocks:
    """The whole UI around one loaded `hydra_core.pipeline.HydraPipeline`."""
    studio = Studio(pipeline)
    with gr.Blocks(title="HYDRA Studio", delete_cache=(FILE_MAX_AGE_S, FILE_MAX_AGE_S)) as demo:
        gr.Markdown("# HYDRA Studio\nText-to-image, reconstruction and chat with one unified model, with its "
                    "generation-semantic bottleneck (GSB) latents beside every output.")
        status = gr.Markdown(studio.status(), elem_id="status")
        with gr.Accordion("About this model", open=False, elem_id="about"):
            gr.Markdown(about_model(getattr(pipeline, "path", None)))

        def refresh(event):
            """After an event, success or not, update the status line."""
            return event.then(studio.status, None, status, queue=False, show_progress="hidden",
                              api_visibility="private")

        states = SimpleNamespace(gen=gr.State(None), index=gr.State(0), rec=gr.State(None))
        with gr.Tab("Generate", id="generate"):
            generate_tab.build(generate_tab.GenerateTab(studio), states, refresh)
        with gr.Tab("Reconstruct", id="reconstruct"):
            reconstruct_tab.build(reconstruct_tab.ReconstructTab(studio), states, refresh)
        with gr.Tab("Chat", id="chat"):
            chat_tab.build(chat_tab.ChatTab(studio), refresh)
        with gr.Tab("Compare", id="compare"):
            compare_tab.build(compare_tab.CompareTab(studio), states, refresh)
        demo.load(studio.status, None, status, queue=False, show_progress="hidden", api_visibility="private")
    demo.hydra = studio  # for tests (e.g. a simulated out-of-memory error)
    demo.queue(max_size=QUEUE_SIZE)
    return demo


def serve_locally(pipeline, mcp_server: bool = False) -> tuple[gr.Blocks, str]:
    """Build the app and serve it on a free 127.0.0.1 port without blocking: (demo, url).
    For tests and benchmarks; close with demo.close()."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(pipeline)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                            mcp_server=mcp_server, **launch_kwargs())
    return demo, url
