"""Circuits: open a circuit file from the runs folder or find one for a task (lmscope.circuits.run.find_circuit),
draw its graph (lmscope.circuits.graph.circuit_graph: nodes by layer, edges by EAP score), its faithfulness vs size
curve (FaithfulnessResult.figure) and activation-patching heatmaps (lmscope.circuits.activation_patching).
All three are jobs; a found circuit is saved under <runs>/circuits/."""
from __future__ import annotations

from lmscope.circuits import (activation_patching, circuit_graph, evaluate_saved, find_circuit, load_circuit,
                              load_circuit_task)
from lmscope.circuits.tasks import BUILTIN
from lmscope.lab import recipes, runs_index
from lmscope.lab.http import FieldError, blame, choice, integer
from lmscope.lab.jobs import cache_key


def task_choices(state) -> dict:
    return {"builtin": list(BUILTIN), "files": [e.to_json() for e in runs_index.scan(state.runs) if e.kind == "task"]}


def _task_spec(state, data: dict) -> tuple[str, str]:
    """(what load_circuit_task takes, how to write it in a recipe) from the form's task name or task-file id."""
    task = data.get("task")
    if isinstance(task, str) and task in BUILTIN:
        return task, task
    if isinstance(task, str) and task.startswith("r"):
        entry = runs_index.lookup(state.runs, task, "task", field="task")
        return str(entry.path), str(entry.path)
    raise FieldError("task", f"choose a task: one of {', '.join(BUILTIN)} or a task file of the runs folder")


def _load_task(model, spec: str, n: int):
    with blame("task"):
        return load_circuit_task(model, spec, n=n)


def _graph_payload(model, task, circuit):
    graph = circuit_graph(model, task, circuit.nodes(model), n_prompts=min(16, len(task)))
    return graph


def find_circuit_job(state, data: dict):
    spec, shown = _task_spec(state, data)
    method = choice(data, "method", ["patch", "eap", "eap-ig", "prune"], default="eap")
    n = integer(data, "n", 4, 400, default=40)
    heads = integer(data, "max_heads", 1, state.model.n_layers * state.model.n_heads,
                    default=max(1, int(0.2 * state.model.n_layers * state.model.n_heads)))
    params = {"task": spec, "method": method, "n": n, "max_heads": heads}

    def run(model):
        task = _load_task(model, spec, n)
        result, circuit = find_circuit(model, task, method=method, max_heads=heads, n_train=None)
        folder = state.runs / "circuits"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{task.name.replace('/', '_')}-{method}-{cache_key('circuit', state.spec, params)[:8]}.json"
        if not path.exists():
            circuit.save(path)
        graph = _graph_payload(model, task, circuit)
        py = recipes.python(state.spec, ["from lmscope.circuits import circuit_graph, find_circuit, "
                                         "load_circuit_task"], [
            f"task = load_circuit_task(model, {shown!r}, n={n})",
            f"result, circuit = find_circuit(model, task, method={method!r}, max_heads={heads})",
            "print(result.summary())", "graph = circuit_graph(model, task, circuit.nodes(model), n_prompts=16)",
            "graph.figure().show()"])
        task_args = {"pairs": spec} if spec not in ("ioi", "greater-than", "quote-type", "bracket-depth") else {}
        cli = recipes.cli("circuit", *([] if task_args else [spec]), model=state.spec, method=method,
                          heads=heads, n=None if task_args else n, graph="graph.html", **task_args)
        return recipes.payload({"faithfulness": result.to_json(), "graph": graph.to_json(),
                                "circuit": circuit.to_json(), "saved": path.name},
                               [graph.figure(), result.figure()], py, cli)
    return params, run, f"circuit {method} on {data.get('task')}"


def open_circuit_job(state, data: dict):
    entry = runs_index.lookup(state.runs, data.get("id"), "circuit", field="id")
    n = integer(data, "n", 4, 400, default=40)
    task_field = data.get("task")
    params = {"id": entry.id, "n": n, "task": task_field}

    def run(model):
        with blame("id"):
            circuit = load_circuit(entry.path, model)
        spec = _task_spec(state, {"task": task_field or circuit.task})[0]
        task = _load_task(model, spec, n)
        graph = _graph_payload(model, task, circuit)
        result = evaluate_saved(model, circuit, task)
        py = recipes.python(state.spec, ["from lmscope.circuits import (circuit_graph, evaluate_saved, load_circuit, "
                                         "load_circuit_task)"], [
            f"circuit = load_circuit({str(entry.path)!r}, model)",
            f"task = load_circuit_task(model, {spec!r}, n={n})",
            "print(evaluate_saved(model, circuit, task).summary())",
            "circuit_graph(model, task, circuit.nodes(model), n_prompts=16).figure().show()"])
        cli = recipes.cli("circuit", "eval", str(entry.path), model=state.spec,
                          **({"pairs": spec} if spec.endswith(".jsonl") else {"task": spec, "n": n}))
        return recipes.payload({"faithfulness": result.to_json(), "graph": graph.to_json(),
                                "circuit": circuit.to_json(), "saved": entry.name},
                               [graph.figure(), result.figure()], py, cli)
    return params, run, f"open circuit {entry.name}"


def patching_job(state, data: dict):
    spec, shown = _task_spec(state, data)
    n = integer(data, "n", 2, 400, default=16)
    params = {"task": spec, "n": n}

    def run(model):
        task = _load_task(model, spec, n)
        r = activation_patching(model, task)
        py = recipes.python(state.spec, ["from lmscope.circuits import activation_patching, load_circuit_task"], [
            f"task = load_circuit_task(model, {shown!r}, n={n})", "r = activation_patching(model, task)",
            "print(r.summary())", "r.figure('z').show()"])
        builtin = not spec.endswith(".jsonl")
        cli = recipes.cli("patch", *([spec] if builtin else []), model=state.spec, n=n if builtin else None,
                          pairs=None if builtin else spec, html="patching.html")
        return recipes.payload(r.to_json(), [r.figure(k) for k in r.effects], py, cli)
    return params, run, f"patching on {data.get('task')}"
