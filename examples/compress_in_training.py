"""Start large, shrink while training: two LRU layers cut by balanced truncation inside a plain loop.

Run: python examples/compress_in_training.py   (about 20 s on one CPU core)
"""

import torch

import adapters.torch as at


def main(steps: int = 300):
    torch.manual_seed(0)
    d_model, length = 16, 128
    model = torch.nn.Sequential(at.LRU(d_model, 64), torch.nn.GELU(), at.LRU(d_model, 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = at.CompressionSchedule(total_steps=steps, window=0.3, num_cuts=3, tol=0.05)

    u = torch.randn(32, length, d_model)
    target = torch.cumsum(u, dim=1) * 0.1           # a task with memory: a leaky running sum
    for step in range(1, steps + 1):
        loss = (model(u) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report = schedule.step(step, model, optimizer)   # cuts at the schedule's steps, else None
        if report:
            print(f"step {step}: loss {loss.item():.4f}")
            print(report)
    print(f"final loss {loss.item():.4f}, state sizes {[m.state_dim for m in model if isinstance(m, at.LRU)]}")


if __name__ == "__main__":
    main()
