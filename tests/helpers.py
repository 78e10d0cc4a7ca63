"""Helpers shared by the trainer-level tests."""

from __future__ import annotations

from hasten.cli import main
from hasten.recipes import build_trainer, load_config
from hasten.trainer.method import StopAt


def run_training(run_dir, overrides: list[str], stop_at: int | None = None, resume: bool = False):
    """Build and fit a trainer from `--set`-style overrides; optionally stop after `stop_at` steps."""
    trainer = build_trainer(load_config(None, overrides), run_dir, resume=resume, progress=False)
    if stop_at is not None:
        trainer.methods.append(StopAt(stop_at))
    trainer.fit()
    return trainer


def make_model(preset: str = "tiny", seed: int = 0):
    import torch

    from hasten.model import GPT, model_config

    torch.manual_seed(seed)
    return GPT(model_config(preset))


def perturb(model, scale: float = 0.1) -> None:
    """A stand-in for an optimizer step: every parameter moves by fresh noise."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def float64_state(model) -> dict:
    return {k: v.detach().double().clone() for k, v in model.state_dict().items()}


def train_with_averager(steps: int, averager=None, preset: str = "tiny", evaluate_every: int = 3, vocab: int = 512):
    """A seeded AdamW loop; data comes from the global RNG so any RNG side effect of the averager would show."""
    import torch

    model = make_model(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for step in range(1, steps + 1):
        x = torch.randint(0, vocab, (2, 17))
        loss = model(x[:, :-1], x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().clone())
        if averager is not None:
            averager.maybe_update(step, model)
            if step % evaluate_every == 0 and averager.ready:
                with torch.no_grad():
                    averager.averaged_model(model)(x[:, :-1], x[:, 1:])  # the eval path must not feed back either
    return model, optimizer, losses


# Lines a command may print on stderr besides its error: progress bars, notes, warnings, the final line of a data
# preparation and the banner of a run that started.
NOT_ERRORS = ("hasten: warning", "hasten: note", "hasten: prepared", "run dir ", "train step ")


def cli(capsys, argv) -> tuple[int, list[str], str]:
    """`hasten ARGV` in process: (exit code, stderr lines that are not progress, notes or warnings, stdout); never a
    traceback, in the main thread or another."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Exception in thread" not in captured.err, captured.err
    lines = [
        line
        for line in captured.err.replace("\r", "\n").splitlines()
        if line.strip() and "%|" not in line and not line.startswith(NOT_ERRORS)
    ]
    return code, lines, captured.out


def one_line_error(capsys, argv, *fragments) -> str:
    """Exit code 2 and one line `hasten: error: ...` containing every fragment; returns the line."""
    code, lines, _ = cli(capsys, argv)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hasten: error:"), (code, lines)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
