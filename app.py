"""certcore Streamlit app: entry point and navigation (pages live in pages/)."""

import streamlit as st

st.set_page_config(page_title="certcore: certified top-k robustness", page_icon="🛡️", layout="wide")

navigation = st.navigation([st.Page("pages/what_if.py", title="What-if", icon="🧮", default=True)])
navigation.run()
