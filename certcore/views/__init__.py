"""What the app's pages compute and draw: explanations, interactive sampling, what-if sweeps, the lesson, figures
and the stored default result. May import every layer below; never streamlit (the pages do that)."""
