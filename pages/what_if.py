"""What-if: certify label counts with no model (placeholder until the full page lands)."""

import numpy as np
import streamlit as st

from certcore import certify_counts

st.title("What-if: certify label counts")
counts_text = st.text_input("Label counts (comma separated)", "80000, 9000, 5000, 3000, 1000, 800, 600, 400, 150, 50")
k = st.number_input("k", min_value=1, value=3)
counts = np.array([int(c) for c in counts_text.split(",")])
st.metric("Certified radius of label 0", certify_counts(counts, 0, d=1024, e=50, k=int(k), alpha=0.001))
