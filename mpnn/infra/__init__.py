"""What every floor stands on, and no idea of its own: where files live (:mod:`.paths`), seeds,
devices and thread counts (:mod:`.determinism`), the one timer (:mod:`.clock`), the compiled
kernels and their measured choices (:mod:`.native`), and the one mini-batch training loop
(:mod:`.train`). The data loaders need :mod:`.paths` (the data folder), so it lives here rather
than in the runtime."""
