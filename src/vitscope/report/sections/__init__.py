"""vitscope's own report analyses; importing this package registers them (see vitscope.report.registry).

To add an analysis: write ``fn(ctx) -> Section`` in one of these modules (or a new one imported here) and
decorate it with ``@analysis(name, title, needs=..., order=...)``.
"""
from vitscope.report.sections import attention, card, similarity, tokens  # noqa: F401
