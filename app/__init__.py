"""Page-side helpers of the dashboard: wording, tables and figures (no Streamlit imports)."""
