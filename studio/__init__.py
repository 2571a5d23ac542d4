"""HYDRA Studio's Gradio UI, one module per tab (`app.py` is the entry point: flags, load, launch).

    common.py           limits, error handling, input components, output files, layout helpers
    device.py           the only code that runs the model (`@spaces.GPU`; plain CPU values in and out)
    latent_panel.py     the latent panel every tab shows, and `Studio`, the state the tabs share
    generate_tab.py     Generate: layout and handlers        reconstruct_tab.py   Reconstruct
    chat_tab.py         Chat                                  compare_tab.py       Compare
    demo.py             build_demo(pipeline): the page; serve_locally for tests and benchmarks

Importing this package loads no model (tests build the demo around a tiny random pipeline).
"""
