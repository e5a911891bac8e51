"""webui adapters: the gradio chat page and the api_server chat backend."""
