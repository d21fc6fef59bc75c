"""The lab's views: each module turns form fields into a call of the library's own function and its result into a
payload (result JSON, Plotly figures, "copy as Python", "copy as CLI"). Long work is submitted as a job."""
