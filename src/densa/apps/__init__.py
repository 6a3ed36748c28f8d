"""Applications on top of the library: the web server and page, reports and plots, sweeps, TensorBoard."""
