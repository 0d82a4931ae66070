"""Local stand-ins for backends, used by the tests, the demo and the benchmarks.

Nothing in the agent's runtime imports this package.
"""
