"""The demo's API driven with gradio_client: generate (previews streamed, then the grid, the strip and the status's
numbers), a bad value answered with a message, Stop through the API, the compare view's numbers."""

from __future__ import annotations

import re
import socket
import time

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from PIL import Image  # noqa: E402

MODEL = "model's own"


@pytest.fixture(scope="module")
def client():
    import torch

    from condiff.demo.app import build_app, serve

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app()
    url = serve(app, "127.0.0.1", port, block=False)
    yield gradio_client.Client(url, verbose=False)
    app.close()
    torch.set_num_threads(threads)  # later modules compare against subprocesses at the default count


def test_generate_streams_previews_then_the_grid_and_strip(client):
    job = client.submit("three", "cfg", 1.0, 6, "ddim", 0, 2, api_name="/class_conditional")
    preview, result, strip, status = job.result(timeout=120)
    statuses = [out[3] for out in job.outputs()]
    steps_seen = [int(m.group(1)) for s in statuses if (m := re.match(r"Step (\d+) of 6$", s))]
    assert steps_seen and steps_seen == sorted(steps_seen)  # previews came while sampling, in order
    assert statuses.index(next(s for s in statuses if s.startswith("Step"))) < statuses.index(status)
    assert re.search(r"2 images in .* 6 steps, 6 network evaluations per image", status), status  # w = 1: one branch
    assert Image.open(result).size == (2 * 28 * 4, 28 * 4)  # one row of 2, at 4x
    assert Image.open(strip).size == (6 * 28 * 2, 2 * 28 * 2)  # one column per step, one row per image, at 2x
    # the strip's last column is the final images' x0 (the grid's images, at another zoom)
    last = Image.open(strip).convert("L").crop((5 * 56, 0, 6 * 56, 112)).resize((28, 56), Image.NEAREST)
    grid = Image.open(result).convert("L").resize((56, 28), Image.NEAREST)
    # equal in exact arithmetic (the last step's x0 is its sample), computed by different float operations: a pixel
    # may round to the next grey level
    for tile, image in (((0, 0, 28, 28), (0, 0, 28, 28)), ((0, 28, 28, 56), (28, 0, 56, 28))):
        a, b = list(last.crop(tile).getdata()), list(grid.crop(image).getdata())
        assert max(abs(p - q) for p, q in zip(a, b)) <= 1 and len(a) == len(b) == 28 * 28


@pytest.mark.parametrize(
    ("api", "args", "message"),
    [
        ("/class_conditional", ("three", "cfg", 3.0, 0, MODEL, 0, 1), "Steps must be a whole number from 1 to"),
        ("/class_conditional", ("eleven", "cfg", 3.0, 4, MODEL, 0, 1), "label 'eleven' is not a class name"),
        (
            "/class_conditional",
            ("three", "cfg", -1, 4, MODEL, 0, 1),
            "less than minimum value 0",
        ),  # the slider's own check
        ("/class_conditional", ("three", "cfg", 3.0, 4, MODEL, 0, 99), "Images must be a whole number from 1 to 16"),
        ("/latent", ("  ", "", 3.0, 4, MODEL, 0, 1), "The prompt is empty"),
        ("/layout", ("..3\n..", 4.0, 4, MODEL, 0, 1), "same length"),
        ("/compare", ("no guidance vs guidance", "3", "", "", -5, 1), "Seed must be a whole number"),
    ],
)
def test_a_bad_value_is_a_message(client, api, args, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=re.escape(message)):
        client.predict(*args, api_name=api)


def test_stop_through_the_api(client):
    job = client.submit("three", "cfg", 1.0, 500, MODEL, 0, 1, api_name="/class_conditional")
    while not any(str(out[3]).startswith("Step") for out in job.outputs()):
        assert not job.done(), job.outputs()
        time.sleep(0.02)
    client.predict(api_name="/class_conditional_stop")  # the same session (this client) as the run
    _, result, _, status = job.result(timeout=120)
    done = int(re.search(r"Stopped\*\* after (\d+) of 500 steps", status).group(1))
    assert 1 <= done < 500 and result is None


def test_compare_same_noise_side_by_side(client):
    a, b, table = client.predict("no guidance vs guidance", "7", "", "", 0, 2, api_name="/compare")
    rows = [line.split("|") for line in table.splitlines()[2:]]
    assert [r[1].strip() for r in rows] == ["A", "B"]
    steps, speed, nfe = ([float(r[i]) for r in rows] for i in (3, 4, 5))
    assert steps == [14, 14] and nfe[0] == 14 and 14 < nfe[1] <= 28  # w = 1: one branch; gated CFG on its interval
    assert all(s > 0 for s in speed)
    assert Image.open(a).size == Image.open(b).size == (2 * 28 * 4, 28 * 4)


def test_requests_from_several_tabs_queue_and_all_finish(client):
    """Three clients (three browser tabs: separate sessions) submit at once; the queue runs them one at a time and
    each gets its own images (different seeds: different grids)."""
    clients = [client] + [gradio_client.Client(client.src, verbose=False) for _ in range(2)]
    jobs = [c.submit("seven", "cfg", 1.0, 4, MODEL, seed, 1, api_name="/class_conditional") for seed, c in
            enumerate(clients)]  # fmt: skip
    results = [job.result(timeout=180) for job in jobs]
    grids = [list(Image.open(result[1]).convert("L").getdata()) for result in results]
    assert all(re.search(r"1 images? in .* 4 steps", result[3]) for result in results), [r[3] for r in results]
    assert grids[0] != grids[1] != grids[2]
