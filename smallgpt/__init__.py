"""
smallgpt: the library that the scripts at the root (train.py, sample.py, prepare.py, eval.py, tune.py, export.py,
bench.py) share. One flat folder, each file named for what it does and opening with what it holds; model.py, the
GPT itself, stays at the root beside the scripts, the one root module that the library imports.
"""
