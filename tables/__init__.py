"""State tables: the window state format, plans, key state, apply and read (pure), the StateTable
protocol and durable writer (store), changelog restore writes, and the pipeline's table registry."""
