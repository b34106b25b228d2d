"""Publishing: `minillava push` (retried uploads that refuse pickles) and the model cards written with it."""
