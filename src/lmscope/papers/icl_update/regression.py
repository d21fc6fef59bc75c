"""The paper's own setting (Dherin et al. 2025, arXiv 2507.16003): a one-block transformer trained on in-context
linear regression, whose context acts as a rank-1 update of its MLP's first matrix.

The model (the paper's toy model, written here in plain torch; it is not an HF model): a task is w ~ N(0, I_dim);
examples are x ~ N(0, I_dim), y = w.x. Tokens are e_i = [x_i, y_i] for the context and e = [x, 0] for the query.

    h = embed(tokens);  A(C, x) = h_q + softmax(q(h_q) . k(h) / sqrt(d)) v(h)    (the contextual layer; the query
                                                                                   attends to the context and itself)
    prediction = readout(W2 gelu(W A + b1) + b2)                                  (the MLP; W is its first matrix)

There is no skip connection around the MLP, as in the paper's theorem (T_W(C, x) = M_W(A(C, x))): the prediction
with context then equals the prediction without context (the query alone) with W + dW, dW = (W dA) A(x)^T / |A(x)|^2,
exactly (the residual version is handled in `lmscope.papers.icl_update.dynamics`). Training sees context lengths
0..n_context.

Implicit vs explicit updates, on the same examples of each test task (a fresh w, n_context examples, one query):
- implicit (ICL): the model's prediction with the last i examples as context = the no-context model with W + dW_i.
- explicit (GD): starting from the trained W, `gd_steps` full-batch gradient steps on W alone (the same matrix the
  implicit update changes) minimising the mean squared error of the no-context model over those i examples (each
  x_j given alone as a query, target y_j); then the no-context prediction of the query. Steps are normalised by the
  task's mean |A(x_j)|^2 (normalised LMS); the step size is picked, for each i, from a grid on separate validation
  tasks (never on the test tasks).
Both report the mean squared error on the query per number of examples i; `mse_least_squares` is the minimum-norm
least-squares fit on the same examples, a reference that knows the task is linear.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots
from torch import nn

from lmscope.core.checks import check_count, check_number, check_numbers
from lmscope.core.config import option
from lmscope.results import Result


@dataclass(frozen=True)
class RegressionConfig:
    """The toy's size, training and evaluation; the CLI's flags (`lmscope icl-regression --help`)."""
    dim: int = option(3, "x in R^dim: the dimension of the linear tasks")
    n_context: int = option(12, "examples per prompt at test time; training uses every length 0..n_context")
    d_model: int = option(32, "width of the embedding, attention and MLP output")
    d_mlp: int = option(64, "hidden width of the MLP (rows of its first matrix W)")
    steps: int = option(3000, "training steps (Adam)")
    batch: int = option(128, "tasks per training step")
    lr: float = option(3e-3, "Adam learning rate")
    n_test: int = option(512, "test tasks (and as many validation tasks for the GD step size)")
    gd_steps: int = option(10, "explicit gradient steps on W per task")
    gd_lrs: tuple[float, ...] = option((0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                                       "GD step sizes to choose from, per number of examples, on validation tasks")
    seed: int = option(0, "seed of the initialisation, training batches and test tasks")


TINY = RegressionConfig(dim=2, n_context=6, d_model=16, d_mlp=32, steps=150, batch=64, n_test=48, gd_steps=3,
                        gd_lrs=(0.01, 0.1))


class OneBlockTransformer(nn.Module):
    """One softmax-attention layer (the query's row) then an MLP with first matrix `w1`, and a linear readout."""

    def __init__(self, dim: int, d_model: int, d_mlp: int):
        super().__init__()
        self.embed = nn.Linear(dim + 1, d_model)
        self.q, self.k, self.v = (nn.Linear(d_model, d_model, bias=False) for _ in range(3))
        self.w1, self.w2 = nn.Linear(d_model, d_mlp), nn.Linear(d_mlp, d_model)
        self.readout = nn.Linear(d_model, 1)

    def contextual(self, context: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """A(C, x): context [tasks, n, dim + 1] (n may be 0), query_x [tasks, dim] -> [tasks, d_model]."""
        query = torch.cat([query_x, torch.zeros_like(query_x[:, :1])], dim=-1)
        h = self.embed(torch.cat([context, query[:, None]], dim=1))
        h_q = h[:, -1]
        scores = torch.einsum("td,tnd->tn", self.q(h_q), self.k(h)) / math.sqrt(h.shape[-1])
        return h_q + torch.einsum("tn,tnd->td", scores.softmax(-1), self.v(h))

    def mlp(self, a: torch.Tensor, w1: "torch.Tensor | None" = None) -> torch.Tensor:
        """The MLP and readout; `w1` [tasks, d_mlp, d_model] replaces the first matrix per task."""
        pre = self.w1(a) if w1 is None else torch.einsum("tmd,td->tm", w1, a) + self.w1.bias
        return self.readout(self.w2(F.gelu(pre)))[:, 0]

    def forward(self, context: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.contextual(context, query_x))


def sample_tasks(n_tasks: int, n_examples: int, dim: int, generator: torch.Generator, dtype=torch.float32):
    """(context [tasks, n, dim + 1], query_x [tasks, dim], query_y [tasks])."""
    w = torch.randn(n_tasks, dim, generator=generator, dtype=dtype)
    x = torch.randn(n_tasks, n_examples + 1, dim, generator=generator, dtype=dtype)
    y = torch.einsum("tnd,td->tn", x, w)
    return torch.cat([x[:, :-1], y[:, :-1, None]], dim=-1), x[:, -1], y[:, -1]


def train(config: RegressionConfig) -> tuple[OneBlockTransformer, float]:
    """Train on prompts of every length 0..n_context (one length per batch); returns the model and the last loss."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = OneBlockTransformer(config.dim, config.d_model, config.d_mlp)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    recent = []
    for _ in range(config.steps):
        n = int(torch.randint(0, config.n_context + 1, (1,), generator=generator))
        context, query_x, query_y = sample_tasks(config.batch, n, config.dim, generator)
        loss = F.mse_loss(model(context, query_x), query_y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        recent = (recent + [loss.item()])[-50:]
    return model.eval(), sum(recent) / len(recent)


def implicit_updates(model: OneBlockTransformer, context, query_x):
    """Per number of examples i = 0..n: dW_i [tasks, d_mlp, d_model] from the last i examples, and A(x)."""
    a_query = model.contextual(context[:, :0], query_x)
    weight = model.w1.weight
    updates = []
    for i in range(context.shape[1] + 1):
        delta_a = model.contextual(context[:, context.shape[1] - i:], query_x) - a_query
        updates.append(torch.einsum("md,td,te->tme", weight, delta_a, a_query)
                       / a_query.square().sum(-1)[:, None, None])
    return updates, a_query


def explicit_gd(model: OneBlockTransformer, context, lr: float, steps: int) -> torch.Tensor:
    """`steps` gradient steps per task on W (the MLP's first matrix) over the task's examples, each given alone as a
    query (no context); returns the per-task W [tasks, d_mlp, d_model]."""
    n_tasks, n, _ = context.shape
    w1 = model.w1.weight.detach().expand(n_tasks, -1, -1).clone()
    if n == 0:
        return w1
    examples_x, examples_y = context[..., :-1], context[..., -1]
    with torch.no_grad():  # the contextual layer does not change: compute the examples' A once
        a_examples = model.contextual(context[:, :0].repeat_interleave(n, 0), examples_x.reshape(n_tasks * n, -1))
    a_examples = a_examples.reshape(n_tasks, n, -1)
    # normalised step (as in normalised LMS): the curvature of the loss in W scales with |A|^2, so dividing by each
    # task's mean |A_j|^2 keeps one step size stable across tasks (a plain step diverged on a few test tasks)
    power = a_examples.square().sum(-1).mean(-1)[:, None, None]
    for _ in range(steps):
        with torch.enable_grad():  # callers may hold no_grad; these gradients are the method
            w1.requires_grad_(True)
            pre = torch.einsum("tmd,tnd->tnm", w1, a_examples) + model.w1.bias
            predictions = model.readout(model.w2(F.gelu(pre)))[..., 0]
            # the sum over tasks of per-task mean losses: each task's gradient is its own
            loss = (predictions - examples_y).square().mean(-1).sum()
            (grad,) = torch.autograd.grad(loss, w1)
        w1 = (w1 - lr * grad / power).detach()
    return w1


def least_squares(context, query_x) -> torch.Tensor:
    """Minimum-norm least-squares prediction from the examples (a reference that knows the task is linear)."""
    if context.shape[1] == 0:
        return torch.zeros(query_x.shape[0], dtype=query_x.dtype)
    w = torch.linalg.pinv(context[..., :-1]) @ context[..., -1:]
    return (query_x[:, None] @ w)[:, 0, 0]


@dataclass
class RegressionResult(Result, kind="icl_regression"):
    """The identity's error, the implicit updates' increments and the query errors of ICL, explicit GD and least
    squares per number of examples. Its JSON adds final_mse_icl and final_mse_gd. An error is null in the JSON only
    where it was not finite (explicit GD diverged at that number of examples)."""
    config: RegressionConfig
    train_loss: float                 # mean of the last 50 training losses
    max_abs_error: float              # max |prediction with context - prediction without context with W + dW|
    increment_norms: list[float]      # mean over test tasks of ||dW_{i+1} - dW_i||_F, i = 0..n-1
    mse_icl: list[float]              # per number of examples i = 0..n (i = 0: no context)
    mse_gd: list[float]
    mse_least_squares: list[float]
    gd_lrs: list[float]               # step size per number of examples, chosen on validation tasks
    update_cosine: float              # mean cosine between dW_n and the explicit GD update of W (all n examples)
    wall_s: float

    @property
    def final_mse_icl(self) -> float:
        return self.mse_icl[-1]

    @property
    def final_mse_gd(self) -> float:
        return self.mse_gd[-1]

    def json_extras(self) -> dict:
        return {"final_mse_icl": self.final_mse_icl, "final_mse_gd": self.final_mse_gd}

    def figure(self):
        fig = make_subplots(rows=1, cols=2, subplot_titles=("query MSE vs examples", "||dW_{i+1} - dW_i||"))
        examples = list(range(len(self.mse_icl)))
        for name, values in (("in context (= W + dW)", self.mse_icl), ("explicit GD on W", self.mse_gd),
                             ("least squares (reference)", self.mse_least_squares)):
            fig.add_trace(go.Scatter(x=examples, y=values, name=name, mode="lines+markers"), row=1, col=1)
        fig.add_trace(go.Scatter(x=examples[1:], y=self.increment_norms, name="increment norm",
                                 mode="lines+markers"), row=1, col=2)
        fig.update_xaxes(title_text="examples in context")
        fig.update_layout(title="In-context linear regression, one-block transformer", height=420, width=1000)
        return fig

    def title(self) -> str:
        return "Learning without training: in-context linear regression"

    def page_intro(self) -> str:
        return (f"Prediction with context = prediction without context with W + dW: max error "
                f"{self.max_abs_error:.2e} (float64). Explicit GD: {self.config.gd_steps} steps on W, step sizes "
                f"{self.gd_lrs} chosen on validation tasks.")

    def summary(self) -> str:
        c = self.config
        return "\n".join([
            f"icl regression | one-block transformer, dim {c.dim}, d_model {c.d_model}, d_mlp {c.d_mlp}, "
            f"{c.steps} steps, final train loss {self.train_loss:.4f} | {self.wall_s:.1f} s",
            f"with context vs no context with W + dW: max abs error {self.max_abs_error:.3e} (float64, "
            f"{c.n_test} tasks, every context length)",
            "examples        " + " ".join(f"{i:>7}" for i in range(len(self.mse_icl))),
            "mse in context  " + " ".join(f"{v:7.3f}" for v in self.mse_icl),
            "mse explicit GD " + " ".join(f"{v:7.3f}" for v in self.mse_gd),
            "mse least sq.   " + " ".join(f"{v:7.3f}" for v in self.mse_least_squares),
            "||dW_(i+1)-dW_i||        " + " ".join(f"{v:7.3f}" for v in self.increment_norms),
            f"explicit GD: {c.gd_steps} steps on W, step size per i {self.gd_lrs} (chosen on validation tasks); "
            f"cosine(dW_n, GD update) {self.update_cosine:.3f}"])


def check_regression_config(config: RegressionConfig) -> RegressionConfig:
    """One clear error for a size or count that is not a positive integer, or a step size that is not > 0."""
    for name in ("dim", "n_context", "d_model", "d_mlp", "steps", "batch", "n_test"):
        check_count(name, getattr(config, name))
    check_count("gd_steps", config.gd_steps, minimum=0)
    check_count("seed", config.seed, minimum=0)
    check_number("lr", config.lr, positive=True)
    check_numbers("gd_lrs", config.gd_lrs, positive=True)
    return config


def icl_regression(config: RegressionConfig = RegressionConfig()) -> RegressionResult:
    """Train the toy model, check the identity in float64, and compare the implicit update with explicit GD."""
    check_regression_config(config)
    start = time.perf_counter()
    model, train_loss = train(config)
    model = model.double()  # the identity is checked to float64 round-off
    generator = torch.Generator().manual_seed(config.seed + 1)
    test = sample_tasks(config.n_test, config.n_context, config.dim, generator, torch.float64)
    validation = sample_tasks(config.n_test, config.n_context, config.dim, generator, torch.float64)
    context, query_x, query_y = test
    n = config.n_context
    with torch.no_grad():
        updates, a_query = implicit_updates(model, context, query_x)
        weight = model.w1.weight
        max_error, mse_icl = 0.0, []
        for i, dw in enumerate(updates):
            with_context = model(context[:, n - i:], query_x)
            max_error = max(max_error, float((with_context - model.mlp(a_query, weight + dw)).abs().max()))
            mse_icl.append(float((with_context - query_y).square().mean()))
        increments = [float(((updates[i + 1] - updates[i]).flatten(1).norm(dim=-1)).mean()) for i in range(n)]
        mse_ls = [float((least_squares(context[:, n - i:], query_x) - query_y).square().mean())
                  for i in range(n + 1)]

    def gd_mse(tasks, lr, i):
        ctx, qx, qy = tasks
        w1 = explicit_gd(model, ctx[:, n - i:], lr, config.gd_steps)
        with torch.no_grad():
            return float((model.mlp(model.contextual(ctx[:, :0], qx), w1) - qy).square().mean())

    # one step size per number of examples (the loss is a mean over i examples: small i tolerates smaller steps)
    gd_lrs = [min(config.gd_lrs, key=lambda lr: _finite(gd_mse(validation, lr, i))) for i in range(n + 1)]
    mse_gd = [gd_mse(test, gd_lrs[i], i) for i in range(n + 1)]
    with torch.no_grad():
        gd_update = explicit_gd(model, context, gd_lrs[n], config.gd_steps) - weight
        cosine = F.cosine_similarity(updates[-1].flatten(1), gd_update.flatten(1), dim=-1)
    return RegressionResult(config=config, train_loss=train_loss, max_abs_error=max_error, increment_norms=increments,
                            mse_icl=mse_icl, mse_gd=mse_gd, mse_least_squares=mse_ls, gd_lrs=gd_lrs,
                            update_cosine=float(cosine.nan_to_num(0.0).mean()), wall_s=time.perf_counter() - start)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf
