"""Gao et al. 2025, "Weight-sparse transformers have interpretable circuits" (arXiv 2511.13653), first half:

    model.py   the weight-sparse GPT as a Hugging Face causal LM (model_type lmscope_sparse_gpt), AbsTopK
    data.py    Python standard-library source split by file hash, a 2,048-token byte-level BPE, 256-token windows
    train.py   weight-sparse training (per-matrix top-k after every step, annealed) and its dense baseline
    tasks.py   binary next-token Python tasks as circuit TaskSets
    cli.py     lmscope sparse train | tasks
Importing model.py registers the model with AutoConfig / AutoModelForCausalLM (lmscope.load("hf:DIR") does it).
"""
