"""The server process: process set-up (`process`), the hardened uvicorn server (`server`)
and the worker supervisor (`workers`)."""
