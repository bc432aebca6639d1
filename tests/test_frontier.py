"""The guidance frontier's bookkeeping (condiff.evaluation.frontier): resumable points, best FD at an accuracy."""

from condiff.evaluation.frontier import Method, best_at_accuracy, default_methods, frontier_markdown, measure


def test_measure_resumes_from_the_points_file_and_calls_each_method_with_its_scale(tmp_path):
    calls = []

    def evaluate(pipe, num_per_class, seed, **kwargs):
        calls.append((pipe, kwargs))
        return {"accuracy": 0.9 + kwargs["w"] / 100, "frechet_distance": kwargs["w"], "fd_ratio_matched": kwargs["w"]}

    methods = [Method("a", [1.0, 2.0], lambda w: {"w": w}), Method("b", [3.0], lambda w: {"w": w}, pipeline="cg")]
    points = tmp_path / "points.jsonl"
    first = list(measure({"cfg": "P", "cg": "Q"}, methods[:1], points, evaluate, num_per_class=5))
    assert [r["scale"] for r in first] == [1.0, 2.0] and calls == [("P", {"w": 1.0}), ("P", {"w": 2.0})]
    rows = list(measure({"cfg": "P", "cg": "Q"}, methods, points, evaluate, num_per_class=5))
    assert calls[2:] == [("Q", {"w": 3.0})]  # the two points of "a" were read back, not re-measured
    assert [(r["method"], r["scale"], r["accuracy"]) for r in rows] == [("a", 1.0, 0.91), ("a", 2.0, 0.92),
                                                                        ("b", 3.0, 0.93)]  # fmt: skip


def test_best_at_accuracy_takes_the_lowest_fd_ratio_above_the_threshold():
    rows = [
        {"method": "x", "scale": 1.0, "accuracy": 0.985, "fd_ratio_matched": 0.9},
        {"method": "x", "scale": 2.0, "accuracy": 0.992, "fd_ratio_matched": 1.3},
        {"method": "x", "scale": 3.0, "accuracy": 0.995, "fd_ratio_matched": 1.6},
        {"method": "y", "scale": 1.0, "accuracy": 0.97, "fd_ratio_matched": 0.8},
    ]
    best = {r["method"]: r.get("scale") for r in best_at_accuracy(rows)}
    assert best == {"x": 2.0, "y": None}
    assert "| y | - |" in frontier_markdown(rows, "# t")


def test_default_methods_build_the_calls_the_pipelines_take():
    methods = {m.name: m for m in default_methods((0.3, 0.6), (0.2, 0.7), 2.0)}
    assert methods["CFG on (0.3, 0.6)"].call(3.5) == {"guidance": "cfg", "guidance_scale": 3.5,
                                                      "guidance_interval": (0.3, 0.6)}  # fmt: skip
    auto = methods["autoguidance + CFG 2 on (0.3, 0.6)"].call(2.0)["guidance"]
    assert (auto.interval, auto.cfg_scale, auto.cfg_interval) == ((0.0, 1.0), 2.0, (0.3, 0.6))
    assert type(methods["APG (eta 0)"].call(3.0)["guidance"]).__name__ == "AdaptiveProjectedGuidance"
    assert methods["CG (score) + CFG 2"].pipeline == "cg"


def test_a_diffusers_guider_on_the_step_window_equals_condiff_cfg_on_the_interval():
    import torch
    from conftest import tiny_pipeline
    from diffusers import DDIMScheduler
    from diffusers.guiders import ClassifierFreeGuidance

    from condiff.evaluation.frontier import step_window

    pipe = tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler.set_timesteps(10)
    window = step_window(pipe.scheduler.timesteps, 50, (0.3, 0.6))
    assert window == (0.3, 0.7)  # DDIM's 10 of 50 timesteps: 45, 40, ..., 0; t / T in [0.3, 0.6] at steps 3-6
    guider = ClassifierFreeGuidance(guidance_scale=3.0, start=window[0], stop=window[1])

    def run(**kwargs):
        generator = torch.Generator().manual_seed(0)
        return pipe(label=[0, 1], num_inference_steps=10, generator=generator, output_type="latent", **kwargs)

    ours, theirs = run(guidance_scale=3.0, guidance_interval=(0.3, 0.6)), run(guidance=guider)
    assert torch.allclose(ours.images, theirs.images, atol=1e-5) and ours.nfe_per_image == theirs.nfe_per_image == 14
    methods = {m.name: m for m in default_methods((0.3, 0.6), (0.2, 0.7), 2.0, window=window)}
    apg = methods["APG (eta 0) on (0.3, 0.6)"].call(5.0)["guidance"]
    assert (apg._start, apg._stop, apg.guidance_scale) == (0.3, 0.7, 5.0)
