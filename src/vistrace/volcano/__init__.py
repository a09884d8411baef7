"""The Volcano critique / revise / decide loop and its prompts."""
