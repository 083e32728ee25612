"""One module per reference task family, each with its generator (``generate``).

``workload.tasks`` registers them and is the public front: import tasks, streams and
verifiers from there (or from ``workload``), not from these modules. A generator draws
only from the ``random.Random`` it is given, so a seed fixes the stream; how a family's
answer is checked is the verifier spec it puts on each task (``int``, ``exact`` or
``string``), which ``workload.tasks.verify`` applies.
"""
