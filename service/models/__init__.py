"""Model bundles and what runs them: loading and verifying (`bundle`), onnxruntime sessions
(`runtimes`), the registry with atomic reload (`registry`, `reload`), the micro-batching
scorer (`scoring`) and the generator's audio synthesis (`generator`)."""
