"""The ops of every model, each dispatching once to a backend by the tensor's device and dtype."""
