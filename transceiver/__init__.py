"""The stateful process: holds Realtime sessions and runs a backend."""
