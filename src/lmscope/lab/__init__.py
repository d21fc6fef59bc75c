"""lmscope lab: the laboratory in a browser, offline, on one's own machine (`lmscope lab`).

    app.py        the Starlette application: pages and assets from the package, the JSON API, jobs
    cli.py        `lmscope lab [--model] [--port 8765] [--runs DIR] [--host]`
    jobs.py       one job on the model at a time; progress (tokens/s, ETA), cancellation, disk cache
    security.py   Host / Origin checks (no DNS rebinding, no cross-site requests)
    runs_index.py the runs folder, addressed by id (no path from the browser is ever used as a path)
    http.py       form fields, checked, and errors tied to a field
    recipes.py    "copy as Python" / "copy as CLI"
    views/        workbench (logit lens, attention, DLA), steering, neurons, circuits, SAE features, papers
    static/       index.html, app.js, app.css (Plotly.js is served from the installed plotly package)

Every view calls the library's own function and renders its result's to_json() and figure().
"""
