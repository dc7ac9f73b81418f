
return {notify(0, 5, config(1))}
