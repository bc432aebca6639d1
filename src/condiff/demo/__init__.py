"""`condiff demo`: a local Gradio page with live denoising for every shipped pipeline (`pip install "condiff[demo]"`).

`app.py` builds the page (one tab per pipeline in `views.py`, a compare tab in `compare.py`), `panel.py` holds what
every tab shares, `live.py` the worker-thread run whose step previews stream to the page and which Stop interrupts,
`models.py` which folder each tab shows, `previews.py` the pictures of the steps (shared with `condiff generate
--steps-strip`). Only `app.py`, `panel.py`, `views.py` and `compare.py` import gradio.
"""
