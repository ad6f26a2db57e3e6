"""`dlm-sft report RUN_DIR` on a real tiny run: curves PNG and summary."""

from __future__ import annotations

from sft.cli import main
from sft.recipe import build_run_config
from sft.report import read_history
from sft.training.run import train
from tests.conftest import recipe_dict


def test_report_plots_curves_and_summarises_a_tiny_run(qwen2_dir, chat_file, tmp_path, capsys):
    run = tmp_path / "run"
    raw = recipe_dict(
        qwen2_dir,
        chat_file,
        run,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        include_num_input_tokens_seen=True,
    )
    raw["data"]["eval"] = str(chat_file)
    train(build_run_config(raw))

    history = read_history(run)
    assert history.global_step == 4 and history.source == run / "trainer_state.json"  # the finished run's
    assert len(history.series("loss")[1]) == 4 and len(history.series("eval_loss")[1]) == 2

    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    png = run / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    best = min(history.series("eval_loss")[1])
    assert "steps: 4" in out and f"best eval loss: {best:.4f}" in out
    assert "tokens seen: 1,024" in out and "throughput:" in out and "tokens/s" in out


def test_report_on_a_directory_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no trainer_state.json" in capsys.readouterr().err


def test_a_zero_metric_gets_a_tick_and_its_value_in_the_results_panel(tmp_path):
    """A 0.0 score is a bar of no width: the panel still marks it and writes its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sft.report import _plot_results

    results = {"results": {"countdown": {"exact_match,none": 0.0, "exact_match_stderr,none": 0.0}}}
    results["results"]["sudoku"] = {"exact_match,none": 0.5}
    figure, axis = plt.subplots()
    _plot_results(axis, tmp_path / "results.json", results)
    ticks = [tuple(line.get_xdata()) for line in axis.get_lines()]
    assert (0.0, 0.5) in ticks
    assert [text.get_text() for text in axis.texts] == ["0", "0.5"]
    assert axis.get_xlim()[1] > 0.5
    plt.close(figure)
